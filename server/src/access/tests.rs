use super::*;

const A: &str = "0123456789abcdef0123";
const B: &str = "fedcba9876543210fedc";

fn known() -> Vec<String> {
    vec!["imagenet".into(), "laion".into()]
}

#[test]
fn tokens_grant_their_datasets() {
    let text = format!("# readers\n{A} imagenet\n\n{B} *   # operators\n");
    let t = AccessTokens::parse(&text, "tokens", &known()).unwrap();
    assert_eq!(t.len(), 2);
    let a = t.check(A).unwrap();
    assert!(a.allows("imagenet") && !a.allows("laion"));
    assert_eq!(a.label, "tokens line 2");
    assert_eq!(a.names(), vec!["imagenet".to_string()]);
    let b = t.check(B).unwrap();
    assert!(b.allows("laion") && b.allows("imagenet"));
    assert_eq!(b.names(), vec!["*".to_string()]);
    assert!(t.check("0123456789abcdef012").is_none());
    assert!(t.check(&format!("{A}4")).is_none());
    assert!(t.check("").is_none());
}

#[test]
fn bad_lines_are_named() {
    let cases = [
        (format!("{A}\n"), "line 1: a token without datasets"),
        (format!("{A} a b\n"), "more than two fields"),
        ("short imagenet\n".to_string(), "shorter than 16"),
        (format!("\n{A} nope\n"), "line 2: unknown dataset \"nope\""),
        (format!("{A} imagenet,\n"), "an empty dataset name"),
        (
            format!("{A} *\n{A} laion\n"),
            "line 2: the same token as line 1",
        ),
        ("# nothing\n".to_string(), "no token in the file"),
    ];
    for (text, want) in cases {
        let e = AccessTokens::parse(&text, "f", &known()).unwrap_err();
        assert!(e.to_string().contains(want), "{e} lacks {want}");
        assert!(!e.to_string().contains(A), "the token leaked: {e}");
    }
}

#[test]
fn connections_authenticate_once_and_are_checked_per_dataset() {
    let t = AccessTokens::parse(&format!("{A} laion\n"), "f", &known()).unwrap();
    let policy = Policy::Tokens(Arc::new(t));
    let conn = Access::new(&policy, None);
    let e = conn.check("laion").unwrap_err();
    assert!(matches!(e, Error::Unauthenticated { .. }), "{e}");
    let e = conn.authenticate(B).unwrap_err();
    assert!(matches!(e, Error::Unauthenticated { .. }), "{e}");
    conn.authenticate(A).unwrap();
    conn.check("laion").unwrap();
    let e = conn.check("imagenet").unwrap_err();
    assert!(matches!(e, Error::Forbidden { .. }), "{e}");
    assert!(conn.authenticate(A).is_err());
    let open = Access::new(&Policy::Anonymous, None);
    open.check("imagenet").unwrap();
    open.require().unwrap();
    assert_eq!(open.authenticate(A).unwrap().names(), vec!["*".to_string()]);
    open.check("laion").unwrap();
}

#[test]
fn members_prove_the_secret_both_ways() {
    let secret = Arc::new(ClusterSecret::new(b"0123456789abcdef-cluster"));
    let server = Access::new(&Policy::Anonymous, Some(&secret));
    // The asker's first step: its nonce.
    let mine = ClusterSecret::nonce();
    let PeerStep::Challenge { nonce, proof } =
        server.peer_step("node-b", "node-a", &mine, &[]).unwrap()
    else {
        panic!("a challenge first");
    };
    // The asker checks the answerer holds the secret too, for these nonces and ids only.
    assert!(secret.verify(true, [&mine, &nonce], ["node-a", "node-b"], &proof));
    assert!(!secret.verify(true, [&mine, &nonce], ["node-a", "node-c"], &proof));
    assert!(!secret.verify(false, [&mine, &nonce], ["node-a", "node-b"], &proof));
    let other = ClusterSecret::new(b"another-secret-0123456");
    assert!(!other.verify(true, [&mine, &nonce], ["node-a", "node-b"], &proof));
    assert!(server.member().is_none());
    let answer = secret.asker_proof(&mine, &nonce, ["node-a", "node-b"]);
    let PeerStep::Member(id) = server.peer_step("node-b", "node-a", &[], &answer).unwrap() else {
        panic!("a member");
    };
    assert_eq!(id, "node-a");
    assert_eq!(server.member().as_deref(), Some("node-a"));

    // Without the secret: refused, and the connection stays refused.
    let server = Access::new(&Policy::Anonymous, Some(&secret));
    let PeerStep::Challenge { nonce, .. } = server.peer_step("node-b", "x", &mine, &[]).unwrap()
    else {
        panic!("a challenge first");
    };
    let forged = other.asker_proof(&mine, &nonce, ["x", "node-b"]);
    let e = server.peer_step("node-b", "x", &[], &forged).unwrap_err();
    assert!(matches!(e, Error::Unauthenticated { .. }), "{e}");
    let honest = secret.asker_proof(&mine, &nonce, ["x", "node-b"]);
    assert!(server.peer_step("node-b", "x", &[], &honest).is_err());
    assert!(server.member().is_none());
    // A proof replayed on another connection (another nonce) fails.
    let third = Access::new(&Policy::Anonymous, Some(&secret));
    third.peer_step("node-b", "x", &mine, &[]).unwrap();
    assert!(third.peer_step("node-b", "x", &[], &honest).is_err());
    // Out of order: a proof first.
    let fourth = Access::new(&Policy::Anonymous, Some(&secret));
    assert!(fourth.peer_step("node-b", "x", &[], &honest).is_err());
}

proptest::proptest! {
    #[test]
    fn any_file_parses_or_fails_cleanly(text in "[ -~\n\t]{0,400}") {
        let _ = AccessTokens::parse(&text, "f", &known());
    }

    #[test]
    fn only_configured_tokens_pass(token in "[!-~]{0,40}") {
        let t = AccessTokens::parse(&format!("{A} *\n"), "f", &known()).unwrap();
        proptest::prop_assert_eq!(t.check(&token).is_some(), token == A);
    }
}

#[test]
fn secrets_compare_by_digest() {
    assert!(same_bytes(b"control-token-1", b"control-token-1"));
    assert!(!same_bytes(b"control-token-1", b"control-token-2"));
    assert!(!same_bytes(b"control-token-1", b"control-token-1-longer"));
    assert!(!same_bytes(b"", b"x"));
}

#[test]
fn a_nodes_own_proof_reflected_back_is_refused() {
    let secret = Arc::new(ClusterSecret::new(b"0123456789abcdef-cluster"));
    let server = Access::new(&Policy::Anonymous, Some(&secret));
    let e = server
        .peer_step("node-a", "node-a", &ClusterSecret::nonce(), &[])
        .unwrap_err();
    assert!(e.to_string().contains("own node id"), "{e}");
    assert!(server.failed() && server.member().is_none());
}
