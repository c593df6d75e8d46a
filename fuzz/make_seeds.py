#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into corpus/<target>/seed-*.

Run from fuzz/: python3 make_seeds.py. The fuzzer grows its working corpus elsewhere
(see .ci/run); these seeds are the small committed starting point.
"""
import json
import os
import struct

import sys

def write(target, name, data):
    d = os.path.join("corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)

# ---------------------------------------------------------------- pgoutput
def s(text):
    return text.encode() + b"\0"

def tuple_data(cols):
    out = struct.pack(">h", len(cols))
    for c in cols:
        if c is None:
            out += b"n"
        elif c == "<u>":
            out += b"u"
        elif isinstance(c, bytes):
            out += b"b" + struct.pack(">i", len(c)) + c
        else:
            t = c.encode()
            out += b"t" + struct.pack(">i", len(t)) + t
    return out

def relation(rid, ns, name, ident, cols):
    out = b"R" + struct.pack(">I", rid) + s(ns) + s(name) + ident + struct.pack(">h", len(cols))
    for key, cname, oid in cols:
        out += bytes([1 if key else 0]) + s(cname) + struct.pack(">Ii", oid, -1)
    return out

begin = b"B" + struct.pack(">QqI", 0x16B3748, 790_000_000_000_000, 771)
commit = b"C" + bytes([0]) + struct.pack(">QQq", 0x16B3748, 0x16B3780, 790_000_000_000_000)
rel = relation(16384, "public", "kinds", b"d", [
    (True, "id", 23), (False, "n", 1700), (False, "j", 3802), (False, "ts", 1184),
    (False, "b", 17), (False, "big", 20), (False, "arr", 1007), (False, "f", 701),
    (False, "flag", 16), (False, "txt", 1009), (False, "t", 1114),
])
row = ["1", "12345678901234567890.123", '{"a": [1, {"b": null}]}', "2025-01-15 11:00:00.123456+00",
       "\\x00ff10", "9007199254740993", "{1,NULL,3}", "NaN", "t", '{"a b",NULL}', "2025-01-15 11:00:00"]
insert = b"I" + struct.pack(">I", 16384) + b"N" + tuple_data(row)
update_k = b"U" + struct.pack(">I", 16384) + b"K" + tuple_data(["7"] + [None] * 10) + b"N" + tuple_data(row)
update_o = b"U" + struct.pack(">I", 16384) + b"O" + tuple_data(row) + b"N" + tuple_data(["1"] + ["<u>"] * 10)
update = b"U" + struct.pack(">I", 16384) + b"N" + tuple_data(row[:1] + [b"\x01\x02"] + row[2:])
delete = b"D" + struct.pack(">I", 16384) + b"K" + tuple_data(["1"] + [None] * 10)
full = relation(16385, "s", "full", b"f", [(True, "a", 25), (True, "b", 21)])
delete_o = b"D" + struct.pack(">I", 16385) + b"O" + tuple_data(["x", "3"])
truncate = b"T" + struct.pack(">IB", 2, 3) + struct.pack(">II", 16384, 16385)
origin = b"O" + struct.pack(">Q", 0x10) + s("node1")
type_msg = b"Y" + struct.pack(">I", 99999) + s("public") + s("mood")
message = b"M" + bytes([1]) + struct.pack(">Q", 0x20) + s("prefix") + struct.pack(">i", 3) + b"abc"

def framed(*msgs):
    return b"".join(struct.pack(">H", len(m)) + m for m in msgs)

write("pgoutput", "transaction", framed(begin, rel, insert, update, update_k, update_o, delete, commit))
write("pgoutput", "full-identity", framed(begin, full, delete_o, truncate, commit))
write("pgoutput", "misc", framed(origin, type_msg, message, b"S", b"X"))
for name, m in [("insert", insert), ("relation", rel), ("update-old", update_o)]:
    write("pgoutput", "single-" + name, framed(rel, m))

# ---------------------------------------------------------------- values
OIDS = [21, 23, 20, 26, 28, 5069, 700, 701, 16, 114, 3802, 17, 1114, 1184, 25, 603,
        1007, 1016, 1022, 1009, 1020, 1001, 199, 1115, 1000]
samples = {
    21: "-32768", 23: "2147483647", 20: "-9007199254740993", 26: "4294967295", 28: "771",
    5069: "18446744073709551615", 700: "1.5e-45", 701: "-Infinity", 16: "t", 114: '{"a":[1,2.5e300,null]}',
    3802: '[{"k": "\\u00e9"}]', 17: "\\xdeadBEEF", 1114: "2025-01-15 11:00:00.123456",
    1184: "2025-01-15 11:00:00.5+05:30", 25: "plain text", 603: "(1,2),(0,0)",
    1007: "[0:2]={1,NULL,3}", 1016: "{{1,2},{3,4}}", 1022: "{NaN,1e308,-0}", 1009: '{"a,b","c\\"d",NULL,"NULL"}',
    1020: "{(1,1),(0,0);(2,2),(1,1)}", 1001: '{"\\\\x00ff",NULL}', 199: '{"{\\"a\\":1}",null}',
    1115: '{"2025-01-15 11:00:00","infinity"}', 1000: "{t,f,NULL}",
}
for i, oid in enumerate(OIDS):
    write("values", f"{oid}", bytes([i, ord(",")]) + samples[oid].encode())
write("values", "array-delim", bytes([0x80 | 19, ord(";")]) + b"{a;b;{c;d}}")
write("values", "bc-timestamp", bytes([13, 0]) + b"0044-03-15 12:00:00+00 BC")

# ---------------------------------------------------------------- copy_text
write("copy_text", "rows", bytes([3, 7]) + b"1\tabc\t\\N\n2\ta\\tb\\\\c\\n\t\\x41\\101\n3\t\t\\.\n")
write("copy_text", "width0", bytes([0, 1]) + b"\n\n")
write("copy_text", "bad", bytes([2, 2]) + b"1\t2\t3\nx\\")

# ---------------------------------------------------------------- cursor
for name, text in [("plain", "1-42"), ("max", "4294967295-18446744073709551615"), ("zero", "0"),
                   ("bad", "1--2"), ("long", "12345678901234567890-1")]:
    write("cursor", name, text)

# ---------------------------------------------------------------- http_query
for name, text in [
    ("cursor", "since=1-42&limit=10&wait=1.5&collections=public.a,public.b"),
    ("time", "since=2025-01-15T11:00:00.1234567%2B05:30"),
    ("space-time", "since=2025-01-15 11:00:00Z&access_token=x"),
    ("twice", "limit=1&limit=2"),
    ("encoded", "collections=%E2%9C%93,,%20a%20&wait=60"),
    ("bad-percent", "since=%ZZ&limit=%"),
]:
    write("http_query", name, text)

# ---------------------------------------------------------------- mongo_events
def ext(doc):
    return b"\x01" + json.dumps(doc).encode()

token = {"_data": "8265A1B2C3000000012B0229296E04"}
ns = {"db": "app", "coll": "events"}
write("mongo_events", "insert", ext({
    "_id": token, "operationType": "insert", "clusterTime": {"$timestamp": {"t": 1736938800, "i": 1}},
    "wallTime": {"$date": "2025-01-15T11:00:00.123Z"}, "ns": ns,
    "documentKey": {"_id": {"$oid": "65a1b2c3d4e5f60718293a4b"}},
    "fullDocument": {"_id": {"$oid": "65a1b2c3d4e5f60718293a4b"}, "n": 5, "f": 1.5,
                     "big": {"$numberLong": "9007199254740993"}, "d": {"$numberDecimal": "1.10"}}}))
write("mongo_events", "update", ext({
    "_id": token, "operationType": "update", "ns": ns, "documentKey": {"_id": 7},
    "updateDescription": {"updatedFields": {"a.b": 1}, "removedFields": ["c"],
                          "truncatedArrays": [{"field": "arr", "newSize": 1}]},
    "fullDocument": {"_id": 7, "a": {"b": 1}}, "fullDocumentBeforeChange": {"_id": 7, "c": True},
    "lsid": {"id": {"$binary": {"base64": "AAECAwQFBgcICQoLDA0ODw==", "subType": "04"}}},
    "txnNumber": {"$numberLong": "3"}}))
write("mongo_events", "delete", ext({"_id": token, "operationType": "delete", "ns": ns,
                                     "documentKey": {"_id": "k"}}))
write("mongo_events", "rename", ext({"_id": token, "operationType": "rename", "ns": ns,
                                     "to": {"db": "app", "coll": "b"}}))
write("mongo_events", "drop", ext({"_id": token, "operationType": "drop", "ns": {"db": "app", "coll": "b"}}))
write("mongo_events", "invalidate", ext({"_id": token, "operationType": "invalidate"}))
write("mongo_events", "split", ext({"_id": token, "operationType": "insert", "ns": ns,
                                    "splitEvent": {"fragment": 1, "of": 2}, "documentKey": {"_id": 1}}))
# A raw BSON document: {"operationType": "delete", "ns": {"db": "app", "coll": "events"}, "documentKey": {"_id": 1}}
def bson_doc(fields):
    body = b""
    for k, v in fields:
        if isinstance(v, str):
            t = v.encode() + b"\0"
            body += b"\x02" + k.encode() + b"\0" + struct.pack("<i", len(t)) + t
        elif isinstance(v, int):
            body += b"\x10" + k.encode() + b"\0" + struct.pack("<i", v)
        else:
            body += b"\x03" + k.encode() + b"\0" + bson_doc(v)
    return struct.pack("<i", len(body) + 5) + body + b"\0"
write("mongo_events", "bson-delete", b"\x00" + bson_doc([
    ("operationType", "delete"), ("ns", [("db", "app"), ("coll", "events")]), ("documentKey", [("_id", 1)])]))

# ---------------------------------------------------------------- shape
for name, text in [
    ("eq", "owner = 7"),
    ("in", "owner IN (1, 2, NULL) AND NOT done"),
    ("like", "title ILIKE 'o''b%' OR title LIKE 'a\\_%'"),
    ("types", "n > '12.5' AND f <> 'NaN' AND at >= '2025-01-15 11:00:00+02' AND day < '2026-01-01'"),
    ("params", "owner = $1 OR title = $2 OR day = $3"),
    ("nulls", "id IS NULL OR doc IS NOT NULL"),
    ("mongo", "\"address.city\" = 'Oslo'\n{\"address\": {\"city\": \"Oslo\"}}"),
    ("bad", "owner = 1; DROP TABLE t"),
    ("deep", "(" * 20 + "owner = 1" + ")" * 20),
]:
    write("shape", name, text)
