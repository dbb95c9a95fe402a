"""The live dashboard: one page per task, served by the proxy itself.

- `series`: per-minute counts of requests, audits and teacher answers, read once each;
- `pointmap`: the partition map's coordinates, from the served version's clusters;
- `report`: the served version's cluster cards, with where live requests land;
- `data`: the JSON the page renders, gathered and cached per (task, range);
- `static/`: the page, its script and its style (no build step, no CDN).

The routes are in `proxy/routes/dashboard.py`.
"""
