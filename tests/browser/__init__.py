"""Browser tests: the residents' pages in real headless Chromium (Playwright)."""
