// What the pages share: element lookup, URLs relative to the page, and calls to the API that
// turn every error into one readable message. Plain script, loaded before each page's own.
"use strict";

const $ = (id) => document.getElementById(id);
const api = (path) => new URL(path, document.baseURI);

// -- errors -------------------------------------------------------------------------------
const FRIENDLY = {
  empty_input: "That file is empty.",
  unsupported_media_type: "That is not an image we can read (try JPEG, PNG, WebP, GIF, BMP or TIFF).",
  invalid_image: "That image is damaged or truncated and cannot be decoded.",
  too_large: "That image is too large.",
  backend_unavailable: "The search backend is down; try again shortly.",
  unauthorized: "This action needs the API key.",
  not_found: "Not found.",
  url_fetch_failed: "The image at that URL could not be fetched.",
};

class ApiError extends Error {}

// {status, body} of a successful answer (202 included); an ApiError otherwise.
async function request(url, options = {}) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (e) {
    throw new ApiError("Cannot reach the Lookalike service: " + e.message);
  }
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON: a proxy error page */ }
  if (!response.ok) {
    const e = body && body.error;
    const friendly = e && FRIENDLY[e.code];
    const detail = e ? e.message + (e.backend ? ` (backend: ${e.backend})` : "") : response.statusText;
    throw new ApiError(`${friendly ? friendly + " " : ""}${detail} [HTTP ${response.status}]`);
  }
  return { status: response.status, body };
}

async function call(url, options = {}) {
  return (await request(url, options)).body;
}
