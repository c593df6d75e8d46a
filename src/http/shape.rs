//! A client's shape (`where`, `columns`, `params[n]`) for `/v1/changes` and `/v1/stream`.

use super::error::ApiError;
use super::params::RawParams;

/// More names than this in `columns` is a malformed request.
const MAX_COLUMNS: usize = 1000;

/// The client's shape, when it asked for one (`where`, `columns`): added to `filter`, which
/// must let exactly one collection through.
pub async fn shaped(
    log: &crate::log::Log,
    filter: crate::log::RowFilter,
    collections: Option<&[String]>,
    raw: &RawParams,
) -> Result<crate::log::RowFilter, ApiError> {
    use crate::shape::Shape;
    if raw.where_.is_none() && raw.columns.is_none() {
        return Ok(filter);
    }
    let name = if raw.where_.is_some() {
        "where"
    } else {
        "columns"
    };
    let collection = match collections {
        Some([one]) => one,
        _ => {
            return Err(ApiError::bad_parameter(
                name,
                "a shape reads one collection: name it alone in collections=",
            ))
        }
    };
    let catalog = log.columns(collection).await?;
    let columns = match raw.columns.as_deref() {
        None => None,
        Some(list) => {
            let names: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect();
            if names.len() > MAX_COLUMNS {
                return Err(ApiError::bad_parameter("columns", "too many names"));
            }
            if let Some(catalog) = &catalog {
                if let Some(unknown) = names
                    .iter()
                    .find(|n| !catalog.iter().any(|c| &c.name == *n))
                {
                    let shown: String = unknown.chars().take(100).collect();
                    return Err(ApiError::bad_parameter(
                        "columns",
                        format!("unknown column {shown:?} (GET /v1/collections lists the columns)"),
                    ));
                }
            }
            Some(names)
        }
    };
    let mut params = vec![String::new(); raw.params.iter().map(|(i, _)| *i).max().unwrap_or(0)];
    for (index, value) in &raw.params {
        params[index - 1] = value.clone();
    }
    let shape = Shape::new(
        collection,
        raw.where_.as_deref(),
        &params,
        columns,
        catalog.as_deref(),
    )
    .map_err(|e| ApiError::bad_where(&e))?;
    Ok(filter.shaped(std::sync::Arc::new(shape)))
}
