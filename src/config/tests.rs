use super::*;

fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load(
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        None,
    )
}

#[test]
fn nothing_set_means_embedded_mode_with_defaults() {
    let c = load(&[]).unwrap();
    assert_eq!(c.http_addr, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from("./data"));
    assert_eq!(c.store, StoreConfig::Embedded);
    assert_eq!(c.broker, BrokerConfig::Embedded);
    assert_eq!(c.redis, None);
    assert_eq!(c.smtp, None);
    assert_eq!(c.rate_limit_default_limit, 100);
    assert_eq!(c.rate_limit_window, Duration::from_secs(60));
    assert!(c.rate_limit.enabled);
    assert_eq!(c.rate_limit.endpoints.len(), 2, "the seed's two endpoints");
    assert_eq!(c.rate_limit.key_prefix, "ratelimit");
    assert_eq!(c.rate_limit.redis_timeout, Duration::from_millis(5));
    assert_eq!(c.rate_limit.instances, 1);
    assert!(c.rate_limit.trusted_proxies.is_empty());
    assert!(c.admin_api_keys.is_empty());
    assert!(c.render().contains("# mode: embedded"));
}

#[test]
fn redis_urls_encode_the_password() {
    let c = load(&[
        ("REDIS_HOST", "cache"),
        ("REDIS_PASSWORD", "p@ss:w/rd"),
        ("RATE_LIMIT_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1"),
    ])
    .unwrap();
    assert_eq!(
        c.redis.unwrap().url(),
        "redis://:p%40ss%3Aw%2Frd@cache:6379/"
    );
    assert_eq!(
        c.rate_limit.trusted_proxies,
        vec![
            "10.0.0.0/8".parse::<ipnet::IpNet>().unwrap(),
            "192.0.2.1/32".parse().unwrap()
        ]
    );
}

#[test]
fn worker_settings_have_the_seeds_defaults_and_rules_parse() {
    let c = load(&[]).unwrap();
    let w = &c.workers;
    assert_eq!((w.max_deliver, w.ack_wait), (3, Duration::from_secs(30)));
    assert_eq!(
        w.backoff,
        vec![
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(4)
        ]
    );
    assert_eq!(w.dlq_rules.len(), 1);
    let rule = &w.dlq_rules[0];
    assert_eq!(
        (rule.wait, rule.max_retries),
        (Duration::from_secs(1800), 2)
    );
    assert!(
        rule.pattern
            .is_match("cannot talk to the SMTP server: Connection refused")
    );
    assert!(rule.pattern.is_match("network timeout"));
    assert!(!rule.pattern.is_match("550 no such user"));

    let c = load(&[("PRIMED_DLQ_RULES", "")]).unwrap();
    assert!(c.workers.dlq_rules.is_empty(), "empty disables the rules");
    let rules =
        parse_dlq_rules("a:5m:1:email.send,primecheck.requested:x|y:z; b:1s:3::^boom$").unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(
        rules[0].subjects,
        vec!["email.send", "primecheck.requested"]
    );
    assert_eq!(
        rules[0].pattern.as_str(),
        "x|y:z",
        "the pattern may hold ':' and '|'"
    );
    assert!(rules[1].subjects.is_empty());
    for bad in ["a:soon:1::x", "a:1s:many::x", "a:1s:1::(", "a:1s"] {
        assert!(parse_dlq_rules(bad).is_err(), "{bad}");
    }
    assert_eq!(c.workers.email_retry, c.workers.primecheck_retry);
    let c = load(&[
        ("PRIMED_EMAIL_MAX_DELIVER", "5"),
        ("PRIMED_EMAIL_RETRY_BACKOFF", "1m,5m"),
        ("PRIMED_PRIMECHECK_ACK_WAIT_SECONDS", "120"),
    ])
    .unwrap();
    let (p, e) = (&c.workers.primecheck_retry, &c.workers.email_retry);
    assert_eq!((p.max_deliver, p.ack_wait), (3, Duration::from_secs(120)));
    assert_eq!(p.backoff.len(), 3, "the global steps");
    assert_eq!((e.max_deliver, e.ack_wait), (5, Duration::from_secs(30)));
    assert_eq!(
        e.backoff,
        vec![Duration::from_secs(60), Duration::from_secs(300)]
    );
    let err = load(&[("PRIMED_EMAIL_RETRY_BACKOFF", "soon")]).unwrap_err();
    assert!(
        err.to_string().contains("PRIMED_EMAIL_RETRY_BACKOFF"),
        "{err}"
    );
    let err = load(&[("PRIMED_RETRY_BACKOFF", "1s,0s")]).unwrap_err();
    assert!(err.to_string().contains("PRIMED_RETRY_BACKOFF"), "{err}");
}

#[test]
fn the_seeds_production_variables_select_production_mode() {
    let c = load(&[
        ("MYSQL_HOST", "mysql"),
        ("MYSQL_PORT", "3307"),
        ("MYSQL_DATABASE", "prime_check_db"),
        ("MYSQL_USER", "prime_check_user"),
        ("MYSQL_PASSWORD", "p@ss word"),
        ("NATS_HOST", "nats"),
        ("RATE_LIMIT_REDIS_HOST", "redis:6380"),
        ("REDIS_PASSWORD", "r"),
        ("JAEGER_HOST", "jaeger"),
        ("SMTP_HOST", "mailpit"),
        ("SMTP_PORT", "1025"),
        ("SMTP_TLS", "none"),
        ("ADMIN_API_KEYS", "0123456789abcdef, fedcba9876543210"),
    ])
    .unwrap();
    assert_eq!(
        c.store,
        StoreConfig::Mysql {
            url: Secret::new("mysql://prime_check_user:p%40ss%20word@mysql:3307/prime_check_db")
        }
    );
    assert_eq!(
        c.broker,
        BrokerConfig::Nats {
            url: "nats://nats:4222".into(),
            stream: "PRIME".into(),
            replicas: 1,
            subject_prefix: String::new(),
        }
    );
    assert_eq!(
        c.redis.as_ref().map(|r| (r.host.as_str(), r.port)),
        Some(("redis", 6380))
    );
    assert_eq!(c.otlp_endpoint.as_deref(), Some("http://jaeger:4318"));
    assert_eq!(
        c.smtp.as_ref().map(|s| (s.port, s.tls)),
        Some((1025, SmtpTls::None))
    );
    assert_eq!(c.admin_api_keys.len(), 2);
    let rendered = c.render();
    assert!(rendered.contains("# mode: production"));
    assert!(!rendered.contains("p@ss"), "{rendered}");
    assert!(!rendered.contains("0123456789abcdef"), "{rendered}");
    assert!(rendered.contains("MYSQL_PASSWORD"));
    assert!(rendered.contains("<redacted>"));
}

#[test]
fn bad_values_name_the_key_and_the_expected_form() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("MYSQL_HOST", "db"), ("MYSQL_PORT", "abc")],
            r#"MYSQL_PORT must be a number between 1 and 65535, got "abc""#,
        ),
        (
            &[("MYSQL_HOST", "db"), ("MYSQL_PORT", "0")],
            r#"MYSQL_PORT must be a number between 1 and 65535, got "0""#,
        ),
        (
            &[("PRIMED_HTTP_ADDR", "localhost")],
            r#"PRIMED_HTTP_ADDR must be an IP address and port"#,
        ),
        (
            &[("RATE_LIMIT_DEFAULT_LIMIT", "-5")],
            r#"RATE_LIMIT_DEFAULT_LIMIT must be a whole number of requests, at least 1, got "-5""#,
        ),
        (
            &[("RATE_LIMIT_WINDOW_SECONDS", "0")],
            "RATE_LIMIT_WINDOW_SECONDS must be",
        ),
        (
            &[("MYSQL_USER", "u")],
            "MYSQL_HOST must be set when any other MYSQL_* key is set",
        ),
        (
            &[("DATABASE_URL", "postgres://x")],
            "DATABASE_URL must be a mysql:// URL",
        ),
        (
            &[("DATABASE_URL", "mysql://x"), ("MYSQL_HOST", "db")],
            "DATABASE_URL and MYSQL_HOST are both set",
        ),
        (
            &[("NATS_URL", "http://x")],
            "NATS_URL must be a nats:// URL",
        ),
        (
            &[("DATABASE_URL", "mysql://u:pw@db:port/x")],
            "DATABASE_URL must be a mysql:// URL",
        ),
        (
            &[("JWT_SECRET", "a")],
            "JWT_SECRET must be at least 32 bytes",
        ),
        (
            &[("NATS_URL", "nats://a:4222,http://b:4222")],
            "NATS_URL must be a nats:// URL",
        ),
        (
            &[("NATS_URL", "nats://a:4222"), ("NATS_REPLICAS", "7")],
            "NATS_REPLICAS must be 1, 3 or 5",
        ),
        (
            &[("SMTP_HOST", "mail"), ("SMTP_TLS", "maybe")],
            "SMTP_TLS must be one of none, starttls, tls",
        ),
        (
            &[("SMTP_HOST", "mail"), ("SMTP_FROM", "nobody")],
            "SMTP_FROM must be an email address",
        ),
        (
            &[("RATE_LIMIT_REDIS_HOST", "redis")],
            "RATE_LIMIT_REDIS_HOST must be host:port",
        ),
        (
            &[("ADMIN_API_KEYS", "short")],
            "ADMIN_API_KEYS must be comma-separated tokens of at least 16 characters each, got <redacted>",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "jaeger:4317")],
            "OTEL_EXPORTER_OTLP_ENDPOINT must be an http://",
        ),
        (
            &[("PRIMED_SHUTDOWN_TIMEOUT_SECONDS", "soon")],
            "PRIMED_SHUTDOWN_TIMEOUT_SECONDS must be",
        ),
        (&[("PRIMED_MAX_DIGITS", "0")], "PRIMED_MAX_DIGITS must be"),
        (
            &[("PRIMED_OUTBOX_BATCH_SIZE", "9999")],
            "PRIMED_OUTBOX_BATCH_SIZE must be a whole number from 1 to 5000",
        ),
        (
            &[("PRIMED_RETRY_JITTER", "1.5")],
            "PRIMED_RETRY_JITTER must be a number from 0 to 1",
        ),
        (
            &[("PRIMED_RETRY_MULTIPLIER", "NaN")],
            "PRIMED_RETRY_MULTIPLIER must be a number from 1 to 10",
        ),
        (
            &[("PRIMED_RETRY_MAX_MS", "10")],
            "PRIMED_RETRY_MAX_MS must be at least PRIMED_RETRY_INITIAL_MS",
        ),
        (
            &[("PRIMED_MIGRATE_ON_START", "perhaps")],
            "PRIMED_MIGRATE_ON_START must be true or false",
        ),
        (
            &[("PRIMED_FAULT_INJECTION", "maybe")],
            r#"PRIMED_FAULT_INJECTION must be true or false, got "maybe""#,
        ),
        (
            &[("RATE_LIMIT_POLICIES", "prime-check: ip 60/fortnight")],
            "RATE_LIMIT_POLICIES is not valid: prime-check: \"ip 60/fortnight\": the period must be",
        ),
        (
            &[("RATE_LIMIT_TRUSTED_PROXIES", "10.0.0.0/8, lb.internal")],
            "RATE_LIMIT_TRUSTED_PROXIES must be comma-separated IP addresses or CIDR networks",
        ),
        (
            &[("RATE_LIMIT_WHITELIST", "300.1.1.1")],
            "RATE_LIMIT_WHITELIST must be comma-separated IP addresses",
        ),
        (
            &[("RATE_LIMIT_SERVICE_KEYS", "short")],
            "RATE_LIMIT_SERVICE_KEYS must be comma-separated keys of at least 16 characters each, got <redacted>",
        ),
        (
            &[("RATE_LIMIT_REDIS_TIMEOUT_MS", "0")],
            "RATE_LIMIT_REDIS_TIMEOUT_MS must be a whole number of milliseconds",
        ),
        (
            &[("RATE_LIMIT_KEY_PREFIX", "a b")],
            "RATE_LIMIT_KEY_PREFIX must be a key prefix without spaces",
        ),
        (
            &[("RATE_LIMIT_ENABLED", "sometimes")],
            "RATE_LIMIT_ENABLED must be true or false",
        ),
    ];
    for (pairs, want) in cases {
        let err = load(pairs)
            .err()
            .unwrap_or_else(|| panic!("{pairs:?} must fail"));
        assert!(
            err.to_string().contains(want),
            "{pairs:?}: got {err}, want {want}"
        );
    }
}

#[test]
fn the_environment_overrides_the_file_and_unknown_file_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("primed.toml");
    std::fs::write(
        &path,
        "primed_http_addr = \"127.0.0.1:9000\"\nMYSQL_HOST = \"db\"\nmysql_port = 3310\nadmin_api_keys = [\"aaaaaaaaaaaaaaaa\", \"bbbbbbbbbbbbbbbb\"]\n",
    )
    .unwrap();
    let env = vec![("MYSQL_PORT".to_string(), "3311".to_string())];
    let c = Config::load(env, Some(&path)).unwrap();
    assert_eq!(c.http_addr.port(), 9000);
    assert_eq!(c.admin_api_keys.len(), 2);
    assert!(matches!(&c.store, StoreConfig::Mysql { url } if url.expose().contains("@db:3311/")));
    let origins: BTreeMap<_, _> = c
        .effective
        .iter()
        .map(|(k, _, o)| (k.name, o.clone()))
        .collect();
    assert_eq!(origins["PRIMED_HTTP_ADDR"], Origin::File);
    assert_eq!(origins["MYSQL_PORT"], Origin::Env);
    assert_eq!(origins["NATS_STREAM"], Origin::Default);

    std::fs::write(&path, "primed_http_adress = \"x\"\n").unwrap();
    let err = Config::load(Vec::new(), Some(&path)).err().unwrap();
    assert!(
        err.to_string()
            .contains("unknown key \"primed_http_adress\""),
        "{err}"
    );

    std::fs::write(&path, "primed_http_addr = [\n").unwrap();
    let err = Config::load(Vec::new(), Some(&path)).err().unwrap();
    assert!(err.to_string().contains("is not valid TOML"), "{err}");

    let err = Config::load(Vec::new(), Some(&dir.path().join("missing.toml")))
        .err()
        .unwrap();
    assert!(err.to_string().contains("cannot read config file"), "{err}");
}

#[test]
fn url_credentials_are_redacted() {
    assert_eq!(
        redact_url_credentials("nats://user:pa55@n1:4222, nats://tok@n2:4222,nats://n3:4222"),
        "nats://<redacted>@n1:4222, nats://<redacted>@n2:4222,nats://n3:4222"
    );
    assert_eq!(
        redact_url_credentials("http://h:4318/v1?next=a@b"),
        "http://h:4318/v1?next=a@b",
        "an @ after the authority is not userinfo"
    );
    assert_eq!(redact_url_credentials("plain@value"), "plain@value");
    let cfg = load(&[("NATS_URL", "nats://user:pa55word@n1:4222")]).unwrap();
    let rendered = cfg.render();
    assert!(!rendered.contains("pa55word"), "{rendered}");
    assert!(rendered.contains("nats://<redacted>@n1:4222"), "{rendered}");
    assert!(!format!("{cfg:?}").contains("pa55word"));
    let err = load(&[("NATS_URL", "http://user:pa55word@n1:4222")])
        .unwrap_err()
        .to_string();
    assert!(!err.contains("pa55word"), "{err}");
}

#[test]
fn trusting_every_address_is_warned_about() {
    assert!(load(&[]).unwrap().warnings().is_empty());
    let narrow = load(&[("RATE_LIMIT_TRUSTED_PROXIES", "10.0.0.0/8")]).unwrap();
    assert!(narrow.warnings().is_empty());
    for everyone in ["0.0.0.0/0", "192.0.2.1, ::/0"] {
        let c = load(&[("RATE_LIMIT_TRUSTED_PROXIES", everyone)]).unwrap();
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{everyone}: {w:?}");
        assert!(w[0].contains("trusts every address"), "{w:?}");
    }
}

#[test]
fn secrets_never_show_in_debug_output() {
    let c = load(&[
        ("JWT_SECRET", "topsecret-topsecret-topsecret-topsecret"),
        ("DATABASE_URL", "mysql://u:pw@h/db"),
    ])
    .unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains("topsecret"));
    assert!(!debug.contains(":pw@"));
}

#[test]
fn the_otlp_protocol_chooses_the_default_port_and_4317_means_grpc() {
    use crate::config::OtlpProtocol;
    let c = load(&[("JAEGER_HOST", "jaeger")]).unwrap();
    assert_eq!(
        (c.otlp_endpoint.as_deref(), c.otlp_protocol),
        (Some("http://jaeger:4318"), OtlpProtocol::HttpProtobuf)
    );
    let c = load(&[
        ("JAEGER_HOST", "jaeger"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ])
    .unwrap();
    assert_eq!(
        (c.otlp_endpoint.as_deref(), c.otlp_protocol),
        (Some("http://jaeger:4317"), OtlpProtocol::Grpc)
    );
    // The seed's JAEGER_PORT=4317 is gRPC's port.
    let c = load(&[("JAEGER_HOST", "jaeger"), ("JAEGER_PORT", "4317")]).unwrap();
    assert_eq!(c.otlp_protocol, OtlpProtocol::Grpc);
    let c = load(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    ])
    .unwrap();
    assert_eq!(c.otlp_protocol, OtlpProtocol::HttpProtobuf);
    let err = load(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && err.contains("grpc or http/protobuf"),
        "{err}"
    );
}
