// figment's Jail API returns its own large error.
#![allow(clippy::result_large_err)]
use super::*;

fn with_env<T>(vars: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
    let mut out = None;
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        for (k, v) in vars {
            jail.set_env(k, v);
        }
        out = Some(f());
        Ok(())
    });
    out.expect("jail ran")
}

#[test]
fn defaults_listen_on_loopback() {
    let s = with_env(&[], || Settings::load(None)).unwrap();
    assert_eq!(s.gateway.listen.to_string(), "127.0.0.1:50051");
    assert_eq!(s.gateway.admin_listen.to_string(), "127.0.0.1:9464");
    assert_eq!(s.feishu.base_url, DEFAULT_BASE_URL);
}

#[test]
fn environment_overrides_the_file() {
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file(
            "g.toml",
            "[gateway]\nlisten = \"127.0.0.1:1\"\n[feishu]\napp_id = \"cli_file\"\n",
        )?;
        jail.set_env("GATEWAY_LISTEN", "127.0.0.1:2");
        let s = Settings::load(Some(std::path::Path::new("g.toml"))).unwrap();
        assert_eq!(s.gateway.listen.to_string(), "127.0.0.1:2");
        assert_eq!(s.feishu.app_id.as_deref(), Some("cli_file"));
        Ok(())
    });
}

#[test]
fn missing_app_id_names_the_variable() {
    let s = with_env(&[("FEISHU_APP_SECRET", "s3cr3t-value")], || {
        Settings::load(None)
    })
    .unwrap();
    let e = s.credentials().unwrap_err().to_string();
    assert!(e.contains("FEISHU_APP_ID"), "{e}");
}

#[test]
fn invalid_listen_address_names_the_variable_once() {
    let e = with_env(&[("GATEWAY_LISTEN", "nowhere")], || Settings::load(None)).unwrap_err();
    let line = e.to_string();
    assert!(line.contains("GATEWAY_LISTEN"), "{line}");
    assert_eq!(line.lines().count(), 1);
}

#[test]
fn secret_is_redacted_in_debug_and_read_from_file() {
    let secret = "very-secret-value-123";
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file("secret.txt", &format!("{secret}\n"))?;
        jail.set_env("FEISHU_APP_ID", "cli_x");
        jail.set_env("FEISHU_APP_SECRET_FILE", "secret.txt");
        let s = Settings::load(None).unwrap();
        let creds = s.credentials().unwrap();
        assert_eq!(creds.app_secret.expose_secret(), secret);
        assert!(!format!("{s:?} {creds:?}").contains(secret));
        Ok(())
    });
}

#[test]
fn plain_http_is_refused_beyond_loopback() {
    let e = with_env(&[("FEISHU_BASE_URL", "http://open.feishu.cn")], || {
        Settings::load(None)
    })
    .unwrap_err();
    assert!(e.to_string().contains("https"), "{e}");
    with_env(&[("FEISHU_BASE_URL", "http://127.0.0.1:8080")], || {
        Settings::load(None)
    })
    .unwrap();
}

#[test]
fn a_base_url_with_a_path_is_refused() {
    let e = with_env(
        &[("FEISHU_BASE_URL", "https://open.feishu.cn/open-apis/")],
        || Settings::load(None),
    )
    .unwrap_err();
    assert!(e.to_string().contains("FEISHU_BASE_URL"));
}

#[test]
fn a_store_apps_event_secrets_come_from_values_or_files_and_stay_redacted() {
    let (token, key) = ("verification-token-xyz", "encrypt-key-uvw");
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file("token.txt", &format!("{token}\n"))?;
        jail.create_file("empty.txt", "\n")?;
        let toml = |events: &str| {
            format!(
                "[[feishu.apps]]\nname = \"isv\"\napp_id = \"cli_s\"\napp_secret = \"s\"\nkind = \"store\"\n{events}"
            )
        };
        jail.create_file(
            "g.toml",
            &toml(&format!(
                "verification_token_file = \"token.txt\"\nencrypt_key = \"{key}\"\n"
            )),
        )?;
        let s = Settings::load(Some(std::path::Path::new("g.toml"))).unwrap();
        let apps = s.apps(AppCredentials::self_built("cli_d", "d")).unwrap();
        let events = &apps[1].1.events;
        let shown = |s: &Option<SecretString>| s.as_ref().map(|s| s.expose_secret().to_owned());
        assert_eq!(shown(&events.verification_token).as_deref(), Some(token));
        assert_eq!(shown(&events.encrypt_key).as_deref(), Some(key));
        let debug = format!("{s:?} {apps:?}");
        assert!(!debug.contains(token) && !debug.contains(key), "{debug}");

        // No token at all is allowed (the app's pushes are refused, with a warning).
        jail.create_file("none.toml", &toml(""))?;
        let s = Settings::load(Some(std::path::Path::new("none.toml"))).unwrap();
        let apps = s.apps(AppCredentials::self_built("cli_d", "d")).unwrap();
        assert!(apps[1].1.events.verification_token.is_none());

        for (events, want) in [
            (
                "verification_token_file = \"empty.txt\"\n",
                "feishu.apps[0].verification_token is empty",
            ),
            (
                "encrypt_key_file = \"missing.txt\"\n",
                "feishu.apps[0].encrypt_key file missing.txt cannot be read",
            ),
        ] {
            jail.create_file("bad.toml", &toml(events))?;
            let s = Settings::load(Some(std::path::Path::new("bad.toml"))).unwrap();
            let e = s
                .apps(AppCredentials::self_built("cli_d", "d"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
        jail.create_file(
            "self.toml",
            "[[feishu.apps]]\nname = \"hr\"\napp_id = \"cli_h\"\napp_secret = \"s\"\nverification_token = \"t\"\n",
        )?;
        let s = Settings::load(Some(std::path::Path::new("self.toml"))).unwrap();
        let e = s
            .apps(AppCredentials::self_built("cli_d", "d"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("are for store apps"), "{e}");
        Ok(())
    });
}

#[test]
fn connection_limits_come_from_the_environment_and_zero_is_refused() {
    let s = with_env(
        &[
            ("GATEWAY_MAX_STREAMS_PER_CONNECTION", "10"),
            ("GATEWAY_MAX_CONNECTIONS", "20"),
            ("GATEWAY_MAX_CONNECTIONS_PER_PEER", "5"),
            ("GATEWAY_HANDSHAKE_TIMEOUT_MS", "300"),
            ("GATEWAY_IDLE_TIMEOUT_MS", "500"),
        ],
        || Settings::load(None),
    )
    .unwrap();
    let g = &s.gateway;
    assert_eq!(
        (
            g.max_streams_per_connection,
            g.max_connections,
            g.max_connections_per_peer,
            g.handshake_timeout_ms,
            g.idle_timeout_ms
        ),
        (10, 20, 5, 300, 500)
    );
    let d = GatewaySettings::default();
    assert_eq!(
        (
            d.max_streams_per_connection,
            d.max_connections,
            d.max_connections_per_peer,
            d.handshake_timeout_ms,
            d.idle_timeout_ms
        ),
        (100, 10_000, 1_000, 10_000, 300_000)
    );
    for var in [
        "GATEWAY_MAX_STREAMS_PER_CONNECTION",
        "GATEWAY_MAX_CONNECTIONS",
        "GATEWAY_MAX_CONNECTIONS_PER_PEER",
        "GATEWAY_HANDSHAKE_TIMEOUT_MS",
        "GATEWAY_IDLE_TIMEOUT_MS",
    ] {
        let e = with_env(&[(var, "0")], || Settings::load(None)).unwrap_err();
        assert!(e.to_string().contains(var), "{e}");
    }
}
