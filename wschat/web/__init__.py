"""The browser client: static HTML, CSS and JavaScript, no build step."""
