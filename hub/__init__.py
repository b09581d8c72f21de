"""The farm hub: TCP ingest from coop cameras, image store, triage, dispatch of
the full analysis, alert rules, and the HTTP + WebSocket face for people.

:mod:`hub.server` wires the pieces into one asyncio process; each other module
holds one of them and can be tested on its own.
"""
