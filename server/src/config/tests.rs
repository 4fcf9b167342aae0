use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn flags(pairs: &[(&str, &str)]) -> Overrides {
    Overrides {
        scalars: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Overrides::default()
    }
}

#[test]
fn defaults_serve_local_data_dir() {
    let c = Config::from_sources(None, &Overrides::default(), &env(&[])).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
    assert_eq!(c.ram_cache, 1 << 30);
    assert_eq!(c.block_size, 4 << 20);
    assert_eq!(c.metadata_ttl, Duration::from_secs(30));
    assert_eq!(c.datasets.len(), 1);
    assert_eq!(c.datasets[0].name, "local");
    assert!(c.datasets[0].origin.starts_with("file:///"));
    assert!(c.datasets[0].origin.ends_with("/data"));
    assert!(c.node_id.is_some());
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let file = r#"
        ram_cache = "2GiB"
        block_size = "8MiB"
        metadata_ttl = "5m"
        listen = "127.0.0.1:9000"
    "#;
    let e = env(&[
        ("SHARDCACHE_RAM_CACHE", "3GiB"),
        ("SHARDCACHE_BLOCK_SIZE", "1MiB"),
    ]);
    let f = flags(&[("ram_cache", "512MiB")]);
    let c = Config::from_sources(Some(file), &f, &e).unwrap();
    assert_eq!(c.ram_cache, 512 << 20);
    assert_eq!(c.block_size, 1 << 20);
    assert_eq!(c.metadata_ttl, Duration::from_secs(300));
    assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
}

#[test]
fn listeners_can_be_turned_off() {
    let c = Config::from_sources(
        Some("admin_listen = \"off\""),
        &flags(&[("control_listen", "off")]),
        &env(&[]),
    )
    .unwrap();
    assert_eq!((c.admin_listen, c.control_listen), (None, None));
    let e = Config::from_sources(None, &flags(&[("control_listen", "nowhere")]), &env(&[]))
        .unwrap_err();
    assert!(e.to_string().contains("or off"), "{e}");
}

#[test]
fn datasets_merge_by_name() {
    let file = r#"
        [[datasets]]
        name = "imagenet"
        origin = "s3://bucket/imagenet/"
        immutable = true
        block_size = "8MiB"
        metadata_ttl = "5m"
        secret_access_key = "hunter2"

        [[datasets]]
        name = "laion"
        origin = "s3://bucket/laion/"
    "#;
    let e = env(&[("SHARDCACHE_DATASET", "extra=memory://")]);
    let f = Overrides {
        datasets: vec!["laion=file:///mnt/laion".into()],
        ..Overrides::default()
    };
    let c = Config::from_sources(Some(file), &f, &e).unwrap();
    let names: Vec<_> = c.datasets.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["imagenet", "laion", "extra"]);
    assert!(c.datasets[0].immutable);
    assert_eq!(c.datasets[0].block_size, Some(8 << 20));
    assert_eq!(c.datasets[0].metadata_ttl, Some(Duration::from_secs(300)));
    assert_eq!(c.datasets[1].origin, "file:///mnt/laion");
    assert!(
        !format!("{c:?}").contains("hunter2"),
        "secrets leak into Debug"
    );
}

#[test]
fn errors_name_the_setting() {
    let bad = |file: Option<&str>, f: Overrides, e: &[(&str, &str)]| {
        Config::from_sources(file, &f, &env(e))
            .unwrap_err()
            .to_string()
    };
    let msg = bad(None, flags(&[("ram_cache", "lots")]), &[]);
    assert!(msg.contains("lots"), "{msg}");
    let msg = bad(
        None,
        Overrides::default(),
        &[("SHARDCACHE_ORIGIN_RETRIES", "x")],
    );
    assert!(msg.contains("SHARDCACHE_ORIGIN_RETRIES"), "{msg}");
    let msg = bad(None, flags(&[("block_size", "1KiB")]), &[]);
    assert!(msg.contains("block_size"), "{msg}");
    let msg = bad(Some("ram_cach = 1"), Overrides::default(), &[]);
    assert!(msg.contains("ram_cach"), "{msg}");
    let msg = bad(
        None,
        Overrides {
            datasets: vec!["nourl".into()],
            ..Overrides::default()
        },
        &[],
    );
    assert!(msg.contains("NAME=URL"), "{msg}");
    let msg = bad(None, flags(&[("quic_listen", "127.0.0.1:0")]), &[]);
    assert!(msg.contains("insecure_dev_tls"), "{msg}");
    let msg = bad(
        None,
        Overrides {
            datasets: vec!["../x=file:///tmp".into()],
            ..Overrides::default()
        },
        &[],
    );
    assert!(msg.contains("dataset"), "{msg}");
}

#[test]
fn every_setting_is_a_flag_a_variable_and_a_key() {
    use clap::{CommandFactory, FromArgMatches, Parser};
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: Overrides,
    }
    let help = Cli::command().render_long_help().to_string();
    for s in SETTINGS {
        // The default is a valid value of the setting's kind.
        let value = match (s.default, s.value_name) {
            ("", "UID,...") => "1000,1001",
            ("", _) => "127.0.0.1:1",
            (default, _) => default,
        };
        let m = Cli::command()
            .try_get_matches_from(["serve", &s.flag(), value])
            .unwrap_or_else(|e| panic!("{}: {e}", s.flag()));
        let o = Overrides::from_arg_matches(&m).unwrap();
        assert_eq!(
            o.scalars.get(s.key).map(String::as_str),
            Some(value),
            "{}",
            s.key
        );
        Config::from_sources(None, &o, &env(&[])).unwrap_or_else(|e| panic!("{}: {e}", s.flag()));
        let var = s.env();
        Config::from_sources(None, &Overrides::default(), &env(&[(&var, value)]))
            .unwrap_or_else(|e| panic!("{var}: {e}"));
        let toml = format!("{} = {value:?}", s.key);
        Config::from_sources(Some(&toml), &Overrides::default(), &env(&[]))
            .unwrap_or_else(|e| panic!("{toml}: {e}"));
        assert!(
            help.contains(&s.flag()) && help.contains(&var),
            "{} in --help",
            s.key
        );
        if s.switch {
            let m = Cli::command()
                .try_get_matches_from(["serve", &s.flag()])
                .unwrap();
            assert_eq!(
                Overrides::from_arg_matches(&m).unwrap().scalars[s.key],
                "true"
            );
        }
    }
    // Where a value came from is named.
    let e = Config::from_sources(
        Some("ram_cache = \"lots\""),
        &Overrides::default(),
        &env(&[]),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("ram_cache in the config file"),
        "{e}"
    );
}

/// Flags of shared/CONTRACT.md not built yet, with the issue that builds them.
const NOT_YET: &[(&str, &str)] = &[
    ("--rdma", "RDMA transport"),
    ("--rdma-device", "RDMA transport"),
];

#[test]
fn the_contracts_flags_all_parse() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let ours = std::fs::read_to_string(root.join("docs/CONTRACT.md")).unwrap();
    // The project's copy of the shared contract follows it.
    if let Ok(shared) = std::fs::read_to_string(root.join("../shared/CONTRACT.md")) {
        assert_eq!(
            ours, shared,
            "docs/CONTRACT.md differs from shared/CONTRACT.md: copy it over"
        );
    }
    let section = ours
        .split("## `shardcache serve`")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap();
    let mut flags: Vec<String> = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `--")) {
        let first_cell = line.split('|').nth(1).unwrap_or_default();
        for part in first_cell.split('`').filter(|p| p.starts_with("--")) {
            flags.push(part.split_whitespace().next().unwrap().to_string());
        }
    }
    assert!(flags.len() > 20, "{flags:?}");
    let known: Vec<String> = SETTINGS.iter().map(SettingInfo::flag).collect();
    for f in &flags {
        let built = known.contains(f) || f == "--config" || f == "--dataset";
        let later = NOT_YET.iter().any(|(n, _)| n == f);
        assert!(
            built || later,
            "{f} in shared/CONTRACT.md is neither a setting nor listed as not built yet"
        );
        assert!(!(built && later), "{f} is built now: take it off NOT_YET");
    }
}

#[test]
fn a_response_buffer_smaller_than_one_connections_is_refused() {
    let e = Config::from_sources(
        Some("response_buffer = \"1MiB\""),
        &Overrides::default(),
        &env(&[("SHARDCACHE_CONNECTION_BUFFER", "8MiB")]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("connection_buffer"), "{e}");
    let c = Config::from_sources(
        None,
        &flags(&[
            ("response_buffer", "64MiB"),
            ("connection_buffer", "256KiB"),
        ]),
        &env(&[]),
    )
    .unwrap();
    assert_eq!(c.response_buffer, 64 << 20);
}
