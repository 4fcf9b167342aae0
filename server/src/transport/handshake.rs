//! The authentication frames of a connection, answered in order: an access token (`Auth`) and
//! the members' challenge–response (`PeerAuth`).

use shardcache_proto::{AuthOk, Frame, PeerAuth};

use super::Serving;
use crate::access::{Access, PeerStep};
use crate::error::Error;

/// The answer to an authentication frame (`None` for any other frame); an error says whether
/// the connection must be closed (a wrong token or proof).
pub(super) fn answer(
    frame: &Frame,
    access: &Access,
    serving: &Serving,
    peer: &str,
) -> Option<Result<Frame, (Error, bool)>> {
    let failed = |e: Error, what: &str| {
        let closing = matches!(e, Error::Unauthenticated { .. });
        if closing {
            serving.metrics.auth_failures.inc();
            tracing::warn!(%peer, error = %e, "closing connection: {what}");
        }
        (e, closing)
    };
    match frame {
        Frame::PeerAuth(step) => {
            let me = serving.node.cluster.node_id().to_string();
            Some(
                match access.peer_step(&me, &step.node_id, &step.nonce, &step.proof) {
                    Ok(PeerStep::Challenge { nonce, proof }) => {
                        Ok(Frame::PeerChallenge(PeerAuth {
                            node_id: me,
                            nonce,
                            proof,
                        }))
                    }
                    Ok(PeerStep::Member(id)) => {
                        tracing::debug!(%peer, member = id, "member proved the cluster secret");
                        Ok(Frame::AuthOk(AuthOk::default()))
                    }
                    Err(e) => Err(failed(e, "not a member")),
                },
            )
        }
        Frame::Auth(auth) => Some(match access.authenticate(&auth.token) {
            Ok(grant) => {
                tracing::debug!(%peer, token = %grant.label, "authenticated");
                Ok(Frame::AuthOk(AuthOk {
                    datasets: grant.names(),
                }))
            }
            Err(e) => Err(failed(e, "unknown access token")),
        }),
        _ => None,
    }
}
