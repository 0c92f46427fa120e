# The README's pull-source walkthrough (the seed's Mailchimp members example), safe to
# run again: `bash examples/sources-walkthrough.sh` from the checkout while `make run` and
# the demo API (`.venv/bin/python -m tests.demo_api --port 8070`) are going (sourced, as
# `. examples/sources-walkthrough.sh`, it works too). Needs curl and python3.
B=${B:-http://127.0.0.1:${INGESTD_HTTP_PORT:-8080}}
DEMO=${DEMO:-http://127.0.0.1:8070}
TOKEN=${INGESTD_ADMIN_TOKEN:-$(cat "${INGESTD_DATA_DIR:-.ingestd}/admin-token" 2>/dev/null)}
H="Authorization: Bearer $TOKEN"; J="Content-Type: application/json"
j() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }  # read a JSON answer
if [ -z "$TOKEN" ] || ! curl -sf -o /dev/null "$B/healthz"; then
  echo "no healthy ingestd at $B (or no admin token): start it with make run"
  return 1 2>/dev/null || exit 1
fi
if [ "$(curl -s -o /dev/null -w '%{http_code}' "$DEMO/3.0/lists/4ca5becb8d/members")" != 401 ]; then
  echo "no demo API at $DEMO: start it with .venv/bin/python -m tests.demo_api --port 8070"
  return 1 2>/dev/null || exit 1
fi

# 1. a schema group and a table for the members, unless they exist
GROUP=$(curl -s -H "$H" "$B/admin/v1/schema-groups" |
  j 'next((g["id"] for g in d["items"] if g["name"] == "Mailchimp"), "")')
if [ -n "$GROUP" ]; then echo "1. schema group Mailchimp exists"; else
  GROUP=$(curl -s -H "$H" -H "$J" "$B/admin/v1/schema-groups" \
    -d '{"name": "Mailchimp", "prefix": "_mailchimp"}' | j 'd["id"]')
  echo "1. schema group Mailchimp created"
fi
if [ "$(curl -s -o /dev/null -w '%{http_code}' -H "$H" \
    "$B/admin/v1/schema-groups/$GROUP/schemas/member")" = 200 ]; then
  echo "   table member exists"
else  # a record is {"member": {...}}: the spec's contentPath wraps each one as "member"
  curl -s -H "$H" -H "$J" "$B/admin/v1/schema-groups/$GROUP/schemas" -d '{
    "table": "member",
    "schema": {
      "type": "object",
      "properties": {
        "member": {"type": "object", "properties": {
          "id": {"type": "string"}, "email_address": {"type": "string"},
          "status": {"type": "string"}}, "required": ["id", "email_address"]}
      },
      "required": ["member"],
      "resmo": {"id": "$.member.id", "name": "$.member.email_address",
                "importantFields": ["$.member.status"]}
    }
  }' | j '"   table member created: resource type", d["resourceType"]'
fi

# 2. an integration the source's records come in as (its ingest key is not needed here)
INTEGRATION=$(curl -s -H "$H" "$B/admin/v1/integrations" |
  j 'next((i["id"] for i in d["items"] if i["name"] == "Mailchimp pull"), "")')
if [ -n "$INTEGRATION" ]; then echo "2. integration Mailchimp pull exists"; else
  INTEGRATION=$(curl -s -H "$H" -H "$J" "$B/admin/v1/integrations" \
    -d "{\"name\": \"Mailchimp pull\", \"schemaGroup\": \"$GROUP\"}" | j 'd["id"]')
  echo "2. integration Mailchimp pull created"
fi

# 3. the seed's Mailchimp members sourceSpec as printed there; host: the demo API, and the
#    API key as a secret param ("format": "password") sent in a header
if [ "$(curl -s -o /dev/null -w '%{http_code}' -H "$H" \
    "$B/admin/v1/source-specs/mailchimp-members")" = 200 ]; then
  echo "3. source spec mailchimp-members exists"
else
  curl -s -H "$H" -H "$J" "$B/admin/v1/source-specs" -d '{
  "name": "mailchimp-members",
  "sourceSpec": {
    "attributes": {
      "uiAttributes": {
        "isSource": true,
        "isPreview": true,
        "isBeta": true,
        "category": {"key": "marketingAutomation"},
        "icon": {"key": "mailchimpMembersIcon"},
        "description": {"key": "mailchimpMembersDescription"},
        "label": {"key": "mailchimpMembersLabel"}
      },
      "urlParams": {
        "host": "'"$DEMO"'",
        "path": "/3.0/lists/${listId}/members",
        "method": "GET"
      },
      "headerParams": {"Authorization": "Bearer ${apiKey}"},
      "contentPath": {
        "path": "$.members",
        "skipAttributes": ["_links", "total_items", "list_id"],
        "overrideWrapperAttribute": "member"
      },
      "paginationParams": {
        "type": "OFFSET",
        "limitName": "count",
        "limitValue": "100",
        "offSetName": "offset"
      },
      "scheduleParams": {
        "scheduleStartParamName": "since_last_changed",
        "scheduleEndParamName": "before_last_changed",
        "scheduleStartParamFormat": "yyyy-MM-ddTHH:mm:ss:fffffffK",
        "scheduleEndParamFormat": "yyyy-MM-ddTHH:mm:ss:fffffffK"
      }
    },
    "spec": {
      "$schema": "http://json-schema.org/draft-07/schema#",
      "type": "object",
      "description": "Define user input parameters to fetch resource values.",
      "properties": {
        "listId": {"type": "string", "description": "listId for which members need to fetch."},
        "apiKey": {"type": "string", "format": "password"}
      },
      "required": ["listId", "apiKey"]
    }
  }
}' | j '"3. source spec", d["name"], "created: revision", d["revision"]'
fi

# 4. the source: the spec, its params (the demo API's list and key), the table, full mode
#    (each run is a snapshot: a member gone from the list is deleted)
if [ "$(curl -s -o /dev/null -w '%{http_code}' -H "$H" "$B/admin/v1/sources/members")" = 200 ]
then echo "4. source members exists"; else
  curl -s -H "$H" -H "$J" "$B/admin/v1/sources" -d "{
    \"name\": \"members\", \"sourceSpec\": \"mailchimp-members\",
    \"params\": {\"listId\": \"4ca5becb8d\", \"apiKey\": \"0123456789abcdef0123456789abcdef-us21\"},
    \"integration\": \"$INTEGRATION\", \"table\": \"member\", \"mode\": \"full\"
  }" | j '"4. source", d["name"], "created:", d["mode"], "mode, params", json.dumps(d["params"])'
fi

# 5. run it now, following its progress until the pipeline has applied what it read
echo "5. ingestd sources run members --follow"
INGESTD_URL=$B .venv/bin/ingestd sources run members --follow || { return 1 2>/dev/null || exit 1; }

# 6. the members, now resources of the table (the resource id is Mailchimp's member id)
curl -s -H "$H" "$B/api/v1/resources/_mailchimp_member?limit=1000" |
  j '"6.", len(d["items"]), "members, e.g.", d["items"][0]["name"], json.dumps(d["items"][0]["importantFields"])'

# 7. the source's runs, newest first
echo "7. ingestd sources runs members"
INGESTD_URL=$B .venv/bin/ingestd sources runs members
