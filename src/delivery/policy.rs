//! TEMPORARY stub, replaced by the real network policy on merge.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UrlRejection {
    #[error("invalid URL: {0}")]
    Invalid(String),
}
pub fn check_url(raw: &str, _allow_private: bool) -> Result<url::Url, UrlRejection> {
    url::Url::parse(raw).map_err(|e| UrlRejection::Invalid(e.to_string()))
}
