"""Small shared helpers: atomic outputs, fingerprints, progress, timing, the cache directory."""
