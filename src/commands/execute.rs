//! Runs a validated [`Command`] against TRiNG: the one place a command
//! becomes upstream calls, and the time they took. IO (HTTP through the
//! [`TringClient`]); the values it works with live in the parent module.

use std::time::{Duration, Instant};

use super::{Command, CommandData, CommandError, Member};
use crate::tring::TringClient;

/// What [`execute`] did: the outcome and the time spent waiting for TRiNG.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    /// The data of an `ok` response, or the error.
    pub outcome: Result<CommandData, CommandError>,
    /// Wall time of the TRiNG requests (all of them, e.g. list + add).
    pub upstream_latency: Duration,
}

/// Runs a validated command against TRiNG. `add` and `remove` list the queue
/// first (see [`crate::tring`]).
pub async fn execute(client: &TringClient, command: &Command) -> Execution {
    let started = Instant::now();
    let agent_name = |member: &Member| member.agent.as_ref().map(|a| a.as_str().to_owned());
    let outcome = match command {
        Command::Add {
            queue,
            member,
            custom,
        } => client
            .add(queue, &member.extension, *custom)
            .await
            .map(|outcome| CommandData::Add {
                queue: queue.clone(),
                agent: agent_name(member),
                extension: member.extension.clone(),
                custom: *custom,
                already_member: outcome.already_member,
            }),
        Command::Remove { queue, member } => {
            client
                .remove(queue, &member.extension)
                .await
                .map(|outcome| CommandData::Remove {
                    queue: queue.clone(),
                    agent: agent_name(member),
                    extension: member.extension.clone(),
                    was_member: outcome.was_member,
                })
        }
        Command::Clean { queue } => client.clean(queue).await.map(|()| CommandData::Clean {
            queue: queue.clone(),
        }),
        Command::List { queue } => client.list(queue).await.map(|members| CommandData::List {
            queue: queue.clone(),
            members,
        }),
        Command::AgentQueues { member } => {
            client
                .agent_queues(&member.extension)
                .await
                .map(|queues| CommandData::AgentQueues {
                    agent: agent_name(member),
                    extension: member.extension.clone(),
                    queues,
                })
        }
    };
    Execution {
        outcome: outcome.map_err(CommandError::from),
        upstream_latency: started.elapsed(),
    }
}
