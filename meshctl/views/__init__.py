"""Views: pure functions from models to rich renderables and JSON data."""
