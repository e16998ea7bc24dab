"""Items: the first resource of the API."""
