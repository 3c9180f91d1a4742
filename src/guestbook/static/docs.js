// Starts Swagger UI on /docs; kept out of the page so no inline script is needed.
"use strict";
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui" });
