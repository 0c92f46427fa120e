"""Code every stage uses: config, stream names, events, schema rules, database."""
