// The API docs page (/docs): Swagger UI over this service's OpenAPI schema. A file, not an inline
// script, so the page runs under the same Content-Security-Policy as the rest of the service.
window.ui = SwaggerUIBundle({ url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true });
