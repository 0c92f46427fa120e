"""Sources: pulling resources from REST APIs (declarative source specs). Not built yet."""
