# The README's walkthrough, safe to run again: `. examples/walkthrough.sh` from the
# checkout while `make run` is going (sourced, $B $H $J $KEY stay set for the README's
# other examples; `bash examples/walkthrough.sh` works too). Needs curl and python3.
B=${B:-http://127.0.0.1:${INGESTD_HTTP_PORT:-8080}}
TOKEN=${INGESTD_ADMIN_TOKEN:-$(cat "${INGESTD_DATA_DIR:-.ingestd}/admin-token" 2>/dev/null)}
H="Authorization: Bearer $TOKEN"; J="Content-Type: application/json"
j() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }  # read a JSON answer
if [ -z "$TOKEN" ] || ! curl -sf -o /dev/null "$B/healthz"; then
  echo "no healthy ingestd at $B (or no admin token): start it with make run"
  return 1 2>/dev/null || exit 1
fi
receipt() {  # wait until event $1 is processed, then print its receipt's outcome
  for _ in $(seq 1 100); do
    R=$(curl -s -H "X-Ingest-Key: $KEY" "$B/integration/custom-data/events/$1")
    case $R in *'"status":"pending"'*) sleep 0.1 ;; *) break ;; esac
  done
  echo "$R" | j 'json.dumps({k: d[k] for k in
    ("status", "created", "updated", "deleted", "unchanged", "rejected")})'
}

# 1. a schema group (its prefix goes in front of each table's resource type), unless it exists
GROUP=$(curl -s -H "$H" "$B/admin/v1/schema-groups" |
  j 'next((g["id"] for g in d["items"] if g["name"] == "Directory"), "")')
if [ -n "$GROUP" ]; then echo "1. schema group Directory exists: $GROUP"; else
  GROUP=$(curl -s -H "$H" -H "$J" "$B/admin/v1/schema-groups" \
    -d '{"name": "Directory", "prefix": "_directory"}' | j 'd["id"]')
  echo "1. schema group Directory created: $GROUP"
fi

# 2. a custom schema: table "employee" -> resource type "_directory_employee"
if [ "$(curl -s -o /dev/null -w '%{http_code}' -H "$H" \
    "$B/admin/v1/schema-groups/$GROUP/schemas/employee")" = 200 ]; then
  echo "2. table employee exists"
else
  curl -s -H "$H" -H "$J" "$B/admin/v1/schema-groups/$GROUP/schemas" -d '{
    "table": "employee",
    "schema": {
      "$schema": "https://json-schema.org/draft/2020-12/schema",
      "type": "object",
      "properties": {
        "employeeId": {"type": "string"},
        "active": {"type": "boolean"},
        "employee": {"type": "object", "properties": {
          "username": {"type": "string"}, "email": {"type": "string"}}}
      },
      "required": ["employeeId"],
      "resmo": {
        "id": "employeeId",
        "name": "$.employee.username",
        "importantFields": ["employeeId", "$.employee.email", "active"]
      }
    }
  }' | j '"2. table employee created: resource type", d["resourceType"], "version", d["version"]'
fi

# 3. an integration; an ingest key is shown only when it is issued, so an existing
#    integration gets a new one (older keys keep working)
INTEGRATION=$(curl -s -H "$H" "$B/admin/v1/integrations" |
  j 'next((i["id"] for i in d["items"] if i["name"] == "HR tool"), "")')
if [ -n "$INTEGRATION" ]; then
  KEY=$(curl -s -X POST -H "$H" "$B/admin/v1/integrations/$INTEGRATION/keys" | j 'd["ingestKey"]')
  echo "3. integration HR tool exists: $INTEGRATION, new ingest key issued"
else
  KEY=$(curl -s -H "$H" -H "$J" "$B/admin/v1/integrations" \
    -d "{\"name\": \"HR tool\", \"schemaGroup\": \"$GROUP\"}" | j 'd["ingestKey"]')
  echo "3. integration HR tool created, ingest key issued"
fi

# 4. a resource with groupKey, event and actor (JSON; curl -g: braces are no glob for curl)
EVENT=$(curl -sg -H "X-Ingest-Key: $KEY" -H "$J" \
  "$B/integration/custom-data/event/employee?groupKey=acme&event=hired&actor={\"name\":\"hr-bot\"}" \
  -d '{"employeeId": "e1", "active": true, "employee": {"username": "jdoe", "email": "jdoe@acme.io"}}' |
  j 'd["eventId"]')
echo "4. event hired accepted: $EVENT"

# 5. its receipt, the resource and its history
echo "5. receipt: $(receipt "$EVENT")"
curl -s -H "$H" "$B/api/v1/resources/_directory_employee/e1?groupKey=acme" |
  j '"   resource e1: version", d["_meta"]["version"], "name", d["name"], json.dumps(d["importantFields"])'
curl -s -H "$H" "$B/api/v1/resources/_directory_employee/e1/history?groupKey=acme" |
  j '"   history of e1:", ", ".join("%s %s (%s)" % (h["version"], h["op"], h["event"]) for h in d["items"])'

# 6. the same payload again changes nothing: no version bump, the receipt says unchanged
EVENT=$(curl -s -H "X-Ingest-Key: $KEY" -H "$J" "$B/integration/custom-data/event/employee?groupKey=acme" \
  -d '{"employeeId": "e1", "active": true, "employee": {"username": "jdoe", "email": "jdoe@acme.io"}}' |
  j 'd["eventId"]')
echo "6. the same again: $(receipt "$EVENT")"

# 7. an update (a history row with a JSON Patch), then a delete
EVENT=$(curl -s -H "X-Ingest-Key: $KEY" -H "$J" "$B/integration/custom-data/event/employee?groupKey=acme&event=left" \
  -d '{"employeeId": "e1", "active": false, "employee": {"username": "jdoe", "email": "jdoe@acme.io"}}' |
  j 'd["eventId"]')
echo "7. left: $(receipt "$EVENT")"
curl -s -H "$H" "$B/api/v1/resources/_directory_employee/e1/history?groupKey=acme" |
  j '"   patch:", json.dumps(d["items"][-1]["patch"])'
EVENT=$(curl -s -X DELETE -H "X-Ingest-Key: $KEY" \
  "$B/integration/custom-data/employee?groupKey=acme&resourceIds=e1&event=offboarded" | j 'd["eventId"]')
echo "   offboarded: $(receipt "$EVENT")"

# 8. a payload with an unknown field is rejected; the sync issue says why
EVENT=$(curl -s -H "X-Ingest-Key: $KEY" -H "$J" "$B/integration/custom-data/event/employee" \
  -d '{"employeeId": "e2", "nickname": "x"}' | j 'd["eventId"]')
echo "8. unknown field: $(receipt "$EVENT")"
curl -s -H "$H" "$B/api/v1/sync-issues?table=employee&limit=1" |
  j '"   sync issue:", *(d["items"][0][k] for k in ("code", "pointer", "resourceId"))'
