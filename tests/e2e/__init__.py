"""End-to-end tests: TaskFlow with a real Better Auth server, Swagger UI and a frontend in Chromium."""
