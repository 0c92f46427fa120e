"""The seed's own examples (seed 004), as printed there, for the pull tests."""

from __future__ import annotations

import json
from typing import Any

#: the seed appendix's "completed source specification using MailChimp Members", verbatim
MAILCHIMP_MEMBERS_TEXT = """
"sourceSpec": {
"attributes": {
"uiAttributes": {
"isSource": true,
"isPreview": true,
"isBeta": true,
"category": {
"key": "marketingAutomation"
},
"icon": {
"key": "mailchimpMembersIcon"
},
"description": {
"key": "mailchimpMembersDescription"
},
"label": {
"key": "mailchimpMembersLabel"
}
},
"urlParams": {
"host": "https://{domain}.api.mailchimp.com",
"path": "/3.0/lists/${listId}/members",
"method": "GET"
},
"contentPath": {
"path": "$.members",
"skipAttributes": [
"_links",
"total_items",
"list_id"
],
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
"listId": {
"type": "string",
"description": "listId for which members need to fetch."
}
}
}
}
"""


def mailchimp_members() -> dict[str, Any]:
    """The ``sourceSpec`` object of the Mailchimp members example (a fresh copy)."""
    spec: dict[str, Any] = json.loads("{" + MAILCHIMP_MEMBERS_TEXT + "}")["sourceSpec"]
    return spec


def zendesk_users() -> dict[str, Any]:
    """The seed's Zendesk pieces as one spec: the CONTINUATION_TOKEN pagination (with the
    end condition its has_more answer needs), the ADVANCE schedule and the @{…} path."""
    return {
        "attributes": {
            "uiAttributes": {"isSource": True, "label": {"key": "zendeskUsers"}},
            "urlParams": {
                "host": "https://${subdomain}.zendesk.com",
                "path": "/api/v2/search/export@{if(empty(coalesce(pipeline()?.parameters?."
                "ingestionStart,'')),'?query=type:user&filter[type]=user&','')}",
                "method": "GET",
                "queryParams": {"query": "{SCHEDULE_QUERY}", "filter[type]": "user"},
            },
            "headerParams": {"Authorization": "Bearer ${token}"},
            "contentPath": {"path": "$.results"},
            "paginationParams": {
                "type": "CONTINUATION_TOKEN",
                "continuationTokenPath": "$.meta.after_cursor",
                "parameterType": "QUERYPARAM",
                "parameterName": "page[after]",
                "delayRequestMillis": "850",
                "endConditionName": "$.meta.has_more",
                "endConditionValue": "Const:false",
            },
            "scheduleParams": {
                "type": "ADVANCE",
                "paramFormat": "yyyy-MM-ddTHH:mm:ssK",
                "incremental": "type:user updated > {START_TIME} updated < {END_TIME}",
                "backfill": "type:user updated < {END_TIME}",
            },
        },
        "spec": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "subdomain": {"type": "string"},
                "token": {"type": "string", "format": "password"},
            },
            "required": ["subdomain", "token"],
        },
    }


#: the seed's example answer of a continuation-token source (has_more false, a cursor)
ZENDESK_ANSWER: dict[str, Any] = {
    "results": [
        {
            "id": 5624716025745,
            "url": "https://dev.zendesk.com/api/v2/users/5624716025745.json",
            "name": "newinctest@zenaep.com",
            "email": "newinctest@zenaep.com",
            "created_at": "2022-04-22T10:27:30Z",
        }
    ],
    "facets": None,
    "meta": {
        "has_more": False,
        "after_cursor": "eyJmaWVsZCI6ImNyZWF0ZWRfYXQiLCJk",
        "before_cursor": None,
    },
    "links": {
        "prev": None,
        "next": "https://dev.zendesk.com/api/v2/search/export.json?filter%5Btype%5D=user"
        "&page%5Bafter%5D=eyJmaWVsZCI6",
    },
}

#: a Mailchimp email-activity answer: contentPath $.emails, explode $.email.activity
EMAIL_ACTIVITY: dict[str, Any] = {
    "emails": [
        {
            "campaign_id": "42694e9e57",
            "list_id": "a1b2c3",
            "email_id": "62eeb292278cc15f5817cb78f7790b08",
            "email_address": "urist.mcvankab@freddiesjokes.com",
            "activity": [
                {"action": "open", "timestamp": "2024-05-01T10:20:30Z", "ip": "10.0.0.1"},
                {"action": "click", "timestamp": "2024-05-01T10:21:00Z", "ip": "10.0.0.2"},
            ],
            "_links": [{"rel": "self"}],
        },
        {
            "campaign_id": "42694e9e57",
            "list_id": "a1b2c3",
            "email_id": "0a1b",
            "email_address": "nobody@example.com",
            "activity": [],
            "_links": [],
        },
    ],
    "campaign_id": "42694e9e57",
    "total_items": 2,
}


def minimal(pagination: dict[str, Any] | None = None, **attributes: Any) -> dict[str, Any]:
    """A small valid spec; ``attributes`` replace members of ``sourceSpec.attributes``."""
    attrs: dict[str, Any] = {
        "urlParams": {"host": "https://api.example.com", "path": "/items", "method": "GET"},
        "contentPath": {"path": "$.items"},
        "paginationParams": pagination or {"type": "NONE"},
    }
    attrs.update(attributes)
    return {
        "attributes": attrs,
        "spec": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"key": {"type": "string", "secret": True}, "id": {"type": "string"}},
        },
    }
