//! Users and groups: the master checks them, each worker switches to its service's before it
//! loads any plugin code.

use std::io;

use nix::sys::signal::Signal;

fn lookup_identity(
    user: Option<&str>,
    group: Option<&str>,
) -> io::Result<(Option<nix::unistd::User>, Option<nix::unistd::Gid>)> {
    let not_found =
        |what: &str, name: &str| io::Error::new(io::ErrorKind::NotFound, format!("no {what} named {name:?}"));
    let user = match user {
        Some(name) => Some(nix::unistd::User::from_name(name)?.ok_or_else(|| not_found("user", name))?),
        None => None,
    };
    let gid = match group {
        Some(name) => Some(nix::unistd::Group::from_name(name)?.ok_or_else(|| not_found("group", name))?.gid),
        None => user.as_ref().map(|u| u.gid),
    };
    Ok((user, gid))
}

/// Checks, in the master, that the user and group exist and that this process may switch to
/// them (it runs as root, or they are already its own).
pub fn check_identity(user: Option<&str>, group: Option<&str>) -> io::Result<()> {
    let (user, gid) = lookup_identity(user, group)?;
    let euid = nix::unistd::geteuid();
    let same_user = user.as_ref().is_none_or(|u| u.uid == euid);
    let same_group = gid.is_none_or(|g| g == nix::unistd::getegid());
    let allowed = euid.is_root() || (same_user && same_group);
    if !allowed {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "switching user or group needs the master to run as root",
        ));
    }
    Ok(())
}

/// Switches this worker to `user` / `group` (the group defaults to the user's): groups first,
/// then the user, so root's privileges are gone for good before any plugin code runs.
pub fn switch_identity(user: Option<&str>, group: Option<&str>) -> io::Result<()> {
    let (user, gid) = lookup_identity(user, group)?;
    if !nix::unistd::geteuid().is_root() {
        // check_identity in the master made sure these are our own already.
        return Ok(());
    }
    if let Some(gid) = gid {
        nix::unistd::setgroups(&[gid])?;
        nix::unistd::setgid(gid)?;
    }
    if let Some(u) = user {
        nix::unistd::setuid(u.uid)?;
    }
    // Changing credentials clears the parent-death signal: set it again, and if the master died
    // before that (we were re-parented), go now.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    if nix::unistd::getppid().as_raw() == 1 {
        return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the master is gone"));
    }
    Ok(())
}
