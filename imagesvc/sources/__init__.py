"""Where source images come from besides the request's own bytes: ``url`` sources, fetched by
``url.UrlFetcher`` behind the SSRF guard of ``guard``."""
