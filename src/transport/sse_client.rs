// placeholder until the transport lands
pub async fn connect(
    server: &str,
    _url: &str,
    _h: &[(String, String)],
    _r: super::Reporter,
) -> Result<super::UpstreamLink, super::ConnectError> {
    Err(super::ConnectError::Http { server: server.into(), message: "not yet".into() })
}
