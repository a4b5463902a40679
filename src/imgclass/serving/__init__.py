"""`imgclass serve`: a FastAPI classification service with an upload page."""
