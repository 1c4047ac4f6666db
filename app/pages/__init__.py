"""Rendering the pages: the Jinja environment (templating.py), a data page and its JSON twin from
one handler (twins.py), the charts' Plotly specs (charts.py, family_charts.py), static files
(static.py), and the pages of complete runs rendered once into the database (prerender.py) and
served from there and from memory with ETags (cache.py)."""
