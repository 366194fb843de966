//! Stopping a `command` stage's processes as a group: the group a running
//! command leads, and the orphans a killed ablate left behind.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// How long a stopped command has to exit after SIGTERM (say, to write a
/// checkpoint) before its process group is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// SIGTERM to the command's process group, SIGKILL to what is left of it
/// after `grace` (or once its shell has exited), then the shell reaped.
pub fn stop_group(child: &mut std::process::Child, grace: Duration) {
    // The group's leader is `child` (spawned with `process_group(0)`, not
    // yet reaped here), so the group id cannot name another group.
    if let Ok(group) = libc::pid_t::try_from(child.id()) {
        // SAFETY: killpg only sends a signal.
        let signal = |sig| unsafe { libc::killpg(group, sig) };
        if signal(libc::SIGTERM) == 0 {
            wait_until(grace, || group_is_gone(group));
            signal(libc::SIGKILL);
        }
    }
    let _ = child.wait();
}

/// Stops what a command of the instance whose state folder is `state_dir`
/// (absolute, canonical) left running, and returns how many process groups
/// that was. A `kill -9` of `ablate run` takes the command's shell with it
/// (PDEATHSIG), but not what the shell started: without this, a rerun would
/// start a second copy beside the orphan, both writing to `$ABLATE_STATE`.
/// The orphans are known by that variable in their environment: it names
/// this instance's state folder, in this workspace, and nothing else.
pub fn stop_leftovers(state_dir: &Path, grace: Duration) -> usize {
    let mut marker = b"ABLATE_STATE=".to_vec();
    marker.extend_from_slice(state_dir.as_os_str().as_encoded_bytes());
    // SAFETY: getpgrp only reads the calling process's group.
    let (own, own_group) = (std::process::id() as libc::pid_t, unsafe { libc::getpgrp() });
    // The groups of live processes holding the marker, never ablate's own.
    // Each signal follows a fresh scan: once its processes have exited, a
    // group id may name another program's group.
    let groups = || -> BTreeSet<libc::pid_t> {
        processes()
            .filter(|&pid| pid != own)
            .filter(|&pid| std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|&b| b == 0).any(|e| e == marker)))
            .filter_map(|pid| proc_stat(pid).filter(|(state, _)| state != "Z").map(|(_, group)| group))
            .filter(|&group| group != own_group)
            .collect()
    };
    let found = groups();
    let signal = |sig| {
        for group in groups() {
            // SAFETY: killpg only sends a signal.
            unsafe { libc::killpg(group, sig) };
        }
    };
    if found.is_empty() {
        return 0;
    }
    tracing::warn!("stopping process group(s) {found:?}, left running by an earlier attempt of this stage");
    signal(libc::SIGTERM);
    wait_until(grace, || groups().is_empty());
    signal(libc::SIGKILL);
    wait_until(Duration::from_secs(2), || groups().is_empty());
    found.len()
}

/// Polls `done` until it holds or `limit` has passed.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline && !done() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The ids of the processes in /proc.
fn processes() -> impl Iterator<Item = libc::pid_t> {
    std::fs::read_dir("/proc").into_iter().flatten().flatten().filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// A process's state letter and process group, from /proc/PID/stat.
fn proc_stat(pid: libc::pid_t) -> Option<(String, libc::pid_t)> {
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
    Some((fields.first()?.to_string(), fields.get(2)?.parse().ok()?))
}

/// Whether no process of the group is left but, at most, its unreaped leader.
fn group_is_gone(group: libc::pid_t) -> bool {
    !processes().any(|pid| proc_stat(pid).is_some_and(|(state, pgrp)| pgrp == group && state != "Z"))
}
