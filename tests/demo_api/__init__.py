"""A local REST API in the shapes of the seed's sources (Mailchimp members and email
activity, Zendesk search export) plus one route per remaining pagination type and a
bulk route for the bench. Tests, the bench and the README walkthrough use it;
``python -m tests.demo_api --port 8070`` runs it alone.

Routes (all GET; ``/all/items`` also POST):

- ``/3.0/lists/{listId}/members?count=&offset=&since_last_changed=&before_last_changed=``
  OFFSET, needs ``Authorization: Bearer <api_key>`` (or Basic, key as password).
- ``/3.0/reports/{campaignId}/email-activity?count=&offset=`` OFFSET, same key.
- ``/api/v2/search/export?query=&filter[type]=user&page[size]=&page[after]=``
  CONTINUATION_TOKEN at ``$.meta.after_cursor``, end at ``$.meta.has_more`` false.
- ``/paged/items?pageNumber=&pageSize=`` PAGE from 1, ``x-pagecount`` header.
- ``/pointer/items?limit=&after=`` POINTER at ``$.paging.next``.
- ``/all/items`` NONE.
- ``/bulk/items?limit=&offset=`` OFFSET over ``bulk_count`` generated records.
"""

from tests.demo_api.app import DemoServer, make_app, running
from tests.demo_api.routes import DEMO, bulk_records
from tests.demo_api.state import (
    API_KEY,
    CAMPAIGN_ID,
    LIST_ID,
    DemoState,
    RequestLog,
    member_id,
    parse_time,
)

__all__ = [
    "API_KEY",
    "CAMPAIGN_ID",
    "DEMO",
    "LIST_ID",
    "DemoServer",
    "DemoState",
    "RequestLog",
    "bulk_records",
    "make_app",
    "member_id",
    "parse_time",
    "running",
]
