"""PagerDuty: the Events API v2 out (events, client), webhooks v3 back in (webhook)."""
