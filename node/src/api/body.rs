//! The JSON body extractor: reads at most `api_body_bytes_max` bytes (413 beyond, before reading
//! more than that) and parses them with field-naming 400s, so that malformed input is always
//! answered with the API's JSON error, never actix's text.

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use futures::future::LocalBoxFuture;
use futures::StreamExt;

use super::error::{parse_json, ServiceError};

/// The body size limit and read deadline, registered as app data.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    /// Largest body, bytes.
    pub bytes_max: usize,
    /// How long the whole body may take to arrive.
    pub read_timeout: std::time::Duration,
}

/// A parsed JSON request body.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ServiceError;
    type Future = LocalBoxFuture<'static, Result<JsonBody<T>, ServiceError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let (limit, read_timeout) = req
            .app_data::<web::Data<BodyLimit>>()
            .map(|limit| (limit.bytes_max, limit.read_timeout))
            .unwrap_or((256 * 1024, std::time::Duration::from_secs(10)));
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<u64>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            let too_large =
                || ServiceError::TooLarge(format!("the request body exceeds {limit} bytes"));
            if declared.is_some_and(|length| length > limit as u64) {
                return Err(too_large());
            }
            // A body that trickles in would hold its connection open: it gets a deadline.
            let reading = async {
                let mut body = web::BytesMut::new();
                while let Some(chunk) = payload.next().await {
                    let chunk = chunk.map_err(|err| {
                        ServiceError::InvalidInput(format!(
                            "could not read the request body: {err}"
                        ))
                    })?;
                    if body.len() + chunk.len() > limit {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            };
            let body = tokio::time::timeout(read_timeout, reading)
                .await
                .map_err(|_| {
                    ServiceError::InvalidInput(format!(
                        "the request body did not arrive within {} ms",
                        read_timeout.as_millis()
                    ))
                })??;
            parse_json::<T>(&body).map(JsonBody)
        })
    }
}
