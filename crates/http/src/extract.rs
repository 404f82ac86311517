//! Extractors whose refusals are [`HttpError`]s, so a malformed body, path or query gets the
//! same error body as everything else (axum's own rejections are plain text).

use crate::HttpError;
use axum::extract::{FromRequest, FromRequestParts};

/// A JSON body.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(HttpError))]
pub struct ApiJson<T>(pub T);

/// Path parameters.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(HttpError))]
pub struct ApiPath<T>(pub T);

/// Query parameters.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(HttpError))]
pub struct ApiQuery<T>(pub T);
