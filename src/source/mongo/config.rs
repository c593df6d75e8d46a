//! A MongoDB source's own keys of its `[[sources]]` entry, parsed and checked.

use crate::config::{Problem, SourceConfig};
use serde::Deserialize;

/// What `kind = "mongodb"` adds to the common keys (`name`, `url`, `url_env`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    database: Option<String>,
    #[serde(default)]
    collections: Vec<String>,
    #[serde(default)]
    full_document: FullDocumentMode,
    #[serde(default)]
    pre_images: bool,
}

/// MongoDB `fullDocument` modes the relay accepts: each gives updates their full document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum FullDocumentMode {
    /// Look the document up when the event is read (the current version, not the one at the time).
    #[default]
    #[serde(rename = "updateLookup")]
    UpdateLookup,
    /// The post-image when the collection records one, else the event is skipped.
    #[serde(rename = "whenAvailable")]
    WhenAvailable,
    /// The post-image; the stream fails when it is missing.
    #[serde(rename = "required")]
    Required,
}

/// One MongoDB source, as configured.
#[derive(Debug, Clone)]
pub struct MongoConfig {
    pub name: String,
    pub url: String,
    pub database: String,
    /// Collection names (without the database); empty when [`MongoConfig::all_collections`].
    pub collections: Vec<String>,
    /// `collections = ["*"]`: every collection of the database.
    pub all_collections: bool,
    /// What an update event carries as the new document (MongoDB `fullDocument`).
    pub full_document: FullDocumentMode,
    /// Fill `before` from pre-images (collections need `changeStreamPreAndPostImages`).
    pub pre_images: bool,
}

impl MongoConfig {
    pub fn parse(source: &SourceConfig) -> Result<MongoConfig, Problem> {
        let options: Options = source.options()?;
        let problem = |message: String| source.problem(message);
        let database = match options.database {
            None => return Err(problem("kind = \"mongodb\" needs database = \"…\"".into())),
            Some(db) if db.is_empty() || db.contains(['.', '/', ' ', '$', '\0']) => {
                return Err(problem(format!(
                    "database {db:?} is not a valid MongoDB database name"
                )))
            }
            Some(db) => db,
        };
        if options.collections.is_empty() {
            return Err(problem("collections is empty: list collections as [\"events\"] or use [\"*\"] for the whole database".into()));
        }
        let all_collections = options.collections.iter().any(|c| c == "*");
        if all_collections && options.collections.len() > 1 {
            return Err(problem(
                "collections = [\"*\"] cannot be combined with collection names".into(),
            ));
        }
        if let Some(bad) = options
            .collections
            .iter()
            .find(|c| c.is_empty() || c.contains('$') || (c.contains('.') && *c != "*"))
        {
            return Err(problem(format!(
                "collection {bad:?}: write collection names without the database, e.g. \"events\""
            )));
        }
        let url = source.resolve_url()?;
        // Syntax and options now (a typo is not worth retrying); SRV lookups at connect time.
        if let Err(e) = mongodb::options::ConnectionString::parse(&url) {
            return Err(problem(format!(
                "invalid MongoDB URL ({e}): write it as mongodb://HOST:27017/?replicaSet=NAME or mongodb+srv://HOST/"
            )));
        }
        Ok(MongoConfig {
            name: source.name.clone(),
            url,
            database,
            collections: if all_collections {
                vec![]
            } else {
                options.collections
            },
            all_collections,
            full_document: options.full_document,
            pre_images: options.pre_images,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{load_text, MINIMAL};

    fn parse(extra: &str) -> Result<MongoConfig, Problem> {
        let text = format!(
            "{MINIMAL}\n[[sources]]\nname = \"m\"\nkind = \"mongodb\"\nurl = \"mongodb://h/\"\n{extra}"
        );
        MongoConfig::parse(&load_text(&text).unwrap().sources[1])
    }

    #[test]
    fn needs_a_database_and_collections() {
        let err = parse("collections = [\"e\"]").unwrap_err();
        assert!(err.to_string().contains("database"), "{err}");
        let err = parse("database = \"app\"").unwrap_err();
        assert!(err.to_string().contains("collections is empty"), "{err}");
        let err = parse("database = \"app\"\ncollections = [\"app.e\"]").unwrap_err();
        assert!(err.to_string().contains("without the database"), "{err}");
        let err = parse("database = \"app\"\ncollections = [\"e\"]\nfull_document = \"lookup\"")
            .unwrap_err();
        assert!(err.to_string().contains("lookup"), "{err}");
        let config = parse(
            "database = \"app\"\ncollections = [\"*\"]\nfull_document = \"required\"\npre_images = true",
        )
        .unwrap();
        assert!(config.all_collections);
        assert_eq!(config.full_document, FullDocumentMode::Required);
        assert!(config.pre_images);
    }

    #[test]
    fn names_unknown_keys() {
        let err = parse("database = \"app\"\ncollections = [\"e\"]\ntables = [\"x\"]").unwrap_err();
        assert!(err.to_string().contains("tables"), "{err}");
    }
}
