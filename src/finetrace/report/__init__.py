"""Reports of an audit: a self-contained HTML page and a model-card section."""
