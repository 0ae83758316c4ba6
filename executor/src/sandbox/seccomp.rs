//! A seccomp-BPF filter, assembled by hand so that the pre-exec child only has to pass a
//! prepared `sock_fprog` to `prctl` (no allocation after fork, no external library).
//!
//! The filter is a deny list: the calls a sandboxed program never needs and that widen the
//! kernel's attack surface or escape the sandbox (mount, ptrace, kexec, bpf, keyrings,
//! io_uring, new namespaces, module loading, ...). Everything else is allowed; the
//! sandbox's other layers (unprivileged uid, no capabilities, namespaces) do the rest.

/// Offsets into `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARG0_LOW: u32 = 16;
const DATA_ARG1_LOW: u32 = 24;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// clone() flags that create namespaces: a sandboxed program may not make any.
const CLONE_NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP) as u32;

/// System calls refused with EPERM.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn denied_syscalls() -> Vec<libc::c_long> {
    let mut calls = vec![
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_bpf,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_userfaultfd,
        libc::SYS_perf_event_open,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_quotactl,
        libc::SYS_syslog,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_lookup_dcookie,
        libc::SYS_fanotify_init,
        libc::SYS_fsopen,
        libc::SYS_fsmount,
        libc::SYS_fsconfig,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_vhangup,
        libc::SYS_kcmp,
        libc::SYS_pidfd_getfd,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend_from_slice(&[
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_uselib,
        libc::SYS__sysctl,
        libc::SYS_nfsservctl,
    ]);
    calls
}

/// Whether this build knows how to filter system calls on the running architecture.
pub(crate) fn supported() -> bool {
    cfg!(any(target_arch = "x86_64", target_arch = "aarch64"))
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Builds the filter program. The instructions are returned as a vector that the caller keeps
/// alive while the child installs it.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn build_filter() -> Vec<libc::sock_filter> {
    let deny_eperm = RET_ERRNO | libc::EPERM as u32;
    let denied = denied_syscalls();
    let mut program = Vec::with_capacity(denied.len() + 24);
    // A foreign architecture's syscall numbers mean something else: kill.
    program.push(stmt(BPF_LD_W_ABS, DATA_ARCH));
    program.push(jump(BPF_JEQ_K, AUDIT_ARCH, 1, 0));
    program.push(stmt(BPF_RET_K, RET_KILL_PROCESS));
    program.push(stmt(BPF_LD_W_ABS, DATA_NR));
    // x32 system calls on x86_64 (bit 30 set) would bypass the numbers below: refuse them.
    #[cfg(target_arch = "x86_64")]
    {
        program.push(jump(BPF_JGE_K, 0x4000_0000, 0, 1));
        program.push(stmt(BPF_RET_K, deny_eperm));
    }
    for nr in denied {
        program.push(jump(BPF_JEQ_K, nr as u32, 0, 1));
        program.push(stmt(BPF_RET_K, deny_eperm));
    }
    // clone3 passes its flags in memory that BPF cannot read: answer ENOSYS so that libc
    // falls back to clone(), whose flags we can check.
    program.push(jump(BPF_JEQ_K, libc::SYS_clone3 as u32, 0, 1));
    program.push(stmt(BPF_RET_K, RET_ERRNO | libc::ENOSYS as u32));
    // clone(): refuse namespace-creating flags (arg 0 on x86_64 and aarch64).
    program.push(jump(BPF_JEQ_K, libc::SYS_clone as u32, 0, 4));
    program.push(stmt(BPF_LD_W_ABS, DATA_ARG0_LOW));
    program.push(jump(BPF_JSET_K, CLONE_NAMESPACE_FLAGS, 0, 1));
    program.push(stmt(BPF_RET_K, deny_eperm));
    program.push(stmt(BPF_RET_K, RET_ALLOW));
    // ioctl(TIOCSTI) pushes input into a terminal: refuse it.
    program.push(jump(BPF_JEQ_K, libc::SYS_ioctl as u32, 0, 4));
    program.push(stmt(BPF_LD_W_ABS, DATA_ARG1_LOW));
    program.push(jump(BPF_JEQ_K, libc::TIOCSTI as u32, 0, 1));
    program.push(stmt(BPF_RET_K, deny_eperm));
    program.push(stmt(BPF_RET_K, RET_ALLOW));
    program.push(stmt(BPF_RET_K, RET_ALLOW));
    program
}

/// On other architectures there is no filter; the probe reports seccomp as unavailable.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) fn build_filter() -> Vec<libc::sock_filter> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_fits_in_a_bpf_program_and_ends_with_allow() {
        let program = build_filter();
        assert!(
            program.len() < 4096,
            "BPF programs are limited to 4096 instructions"
        );
        let last = program.last().map(|i| (i.code, i.k));
        assert_eq!(last, Some((BPF_RET_K, RET_ALLOW)));
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        let program = build_filter();
        for (index, instruction) in program.iter().enumerate() {
            if instruction.code & 0x07 == 0x05 {
                let far = index + 1 + usize::from(instruction.jt.max(instruction.jf));
                assert!(far < program.len(), "jump at {index} leaves the program");
            }
        }
    }
}
