// The library's requests against docs/openapi.yaml (the API as the relay serves it, in
// YAML's JSON form): every path, query parameter and header it sends is documented, and the
// response fields it reads are in the documented schemas.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createClient } from "../../dist/index.js";
import { FakeRelay, until } from "../fake-relay.mjs";

const doc = JSON.parse(readFileSync(new URL("../../../../docs/openapi.yaml", import.meta.url), "utf8"));
const resolve = (p) => (p.$ref ? p.$ref.split("/").slice(1).reduce((o, k) => o[k], doc) : p);

// `params[n]` is the deepObject parameter `params`.
const parameterName = (name) => name.replace(/\[\d+\]$/, "");

function documented(request) {
  const method = request.method.toLowerCase();
  const op = doc.paths[request.path]?.[method];
  assert.ok(op, `${method} ${request.path} is documented`);
  if (method === "post") {
    // The body's top-level fields are in the documented request schema.
    const schema = resolve(op.requestBody.content["application/json"].schema);
    for (const name of Object.keys(JSON.parse(request.body))) assert.ok(schema.properties[name], `body field ${name} of ${request.path}`);
    const mutation = resolve(schema.properties.mutations.items);
    for (const m of JSON.parse(request.body).mutations) {
      for (const name of Object.keys(m)) assert.ok(mutation.properties[name], `mutation field ${name}`);
    }
  }
  const params = (op.parameters ?? []).map(resolve);
  for (const name of request.query.keys()) {
    assert.ok(params.some((p) => p.in === "query" && p.name === parameterName(name)), `query parameter ${name} of ${request.path}`);
  }
  for (const [name] of request.headers) {
    if (["accept", "authorization"].includes(name) || (method === "post" && name === "content-type")) continue;
    assert.ok(params.some((p) => p.in === "header" && p.name.toLowerCase() === name), `header ${name} of ${request.path}`);
  }
}

for (const transport of ["stream", "poll"]) {
  test(`${transport}: what the client sends is documented`, async () => {
    const relay = new FakeRelay();
    relay.commit("insert", { id: 1, title: "a" });
    const client = createClient({ url: "http://relay.test", fetch: relay.fetch, transport, pollWait: 1, backoff: { base: 5, max: 20 } });
    const seen = {};
    client.collection("public.todos", { where: "id = $1", params: [1], columns: ["title"] }).subscribe((rows, info) => Object.assign(seen, { info }));
    await until(() => seen.info?.synced);
    relay.dropStreams();
    relay.commit("insert", { id: 2, title: "b" });
    await client.collection("public.todos", { where: "id = $1", params: [1], columns: ["title"] }).insert({ id: 3, title: "c" });
    await until(() => seen.info.cursor !== "7-1" && seen.info.pending === 0);
    await client.close();
    assert.ok(relay.requests.some((r) => r.headers.has("last-event-id") || r.query.has("since")));
    relay.requests.forEach(documented);
  });
}

test("the response fields the client reads are in the documented schemas", () => {
  const schemas = doc.components.schemas;
  assert.deepEqual(schemas.ChangesPage.required.sort(), ["changes", "cursor", "has_more"]);
  for (const f of ["cursor", "collection", "op", "key", "after", "unchanged"]) assert.ok(schemas.ChangeRecord.properties[f], f);
  assert.ok(schemas.Collections.properties.collections.items.properties.key_columns);
  assert.ok(doc.paths["/v1/changes"].get.responses["410"]);
  assert.ok(doc.paths["/v1/stream"].get.responses["410"]);
  assert.ok(resolve(doc.paths["/v1/stream"].get.responses["401"]).headers["WWW-Authenticate"]);
  const results = schemas.MutationsResponse.properties;
  for (const f of ["results", "cursor", "visible"]) assert.ok(results[f], f);
  for (const f of ["id", "status", "current"]) assert.ok(schemas.MutationResult.properties[f], f);
});
