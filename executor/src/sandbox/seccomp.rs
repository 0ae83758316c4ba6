//! A seccomp-BPF allowlist, assembled by hand so that the pre-exec child only has to pass a
//! prepared `sock_fprog` to `prctl` (no allocation after fork, no external library).
//!
//! The allowed set is Docker's default profile (github.com/moby/profiles, `seccomp/default.json`)
//! for a container without capabilities on x86_64, with its argument filters, made stricter
//! where this sandbox was stricter before:
//! - `clone`: threads and processes, no namespace flags (Docker's mask `0x7E020000`);
//!   `clone3` answers ENOSYS (its flags are in memory BPF cannot read; libc falls back to
//!   `clone`);
//! - `personality`: only 0, `PER_LINUX32`, `UNAME26`, both, and the query `0xffffffff`;
//! - `socket` and `socketpair`: only AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK (Docker only
//!   refuses AF_ALG and AF_VSOCK; every other family can autoload a kernel module);
//! - `ioctl(TIOCSTI)` refused (pushes input into a terminal);
//! - not allowed although Docker allows them: `adjtimex`, `clock_adjtime`,
//!   `name_to_handle_at` (and, as Docker without CAP_SYS_PTRACE on our kernels' side,
//!   `ptrace`, `process_vm_readv`/`writev`).
//!
//! Anything else: EPERM for the system calls this table knows of (up to [`NEWEST_SYSCALL`]),
//! ENOSYS above, as Docker (runc) does, so that programs fall back from system calls newer
//! than the filter. A foreign architecture (i386 `int 0x80`) or an x32 system call kills the
//! process. Lookup is a binary search over the allowed ranges (about nine comparisons).

/// Offsets into `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARG0_LOW: u32 = 16;
const DATA_ARG1_LOW: u32 = 24;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGT_K: u16 = 0x25;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;

/// The newest x86_64 system call this table knows of (`file_setattr`, Linux 6.17).
const NEWEST_SYSCALL: u32 = 469;
/// x32 system calls have this bit set.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// clone() flags that create namespaces (Docker's mask).
const CLONE_NAMESPACE_FLAGS: u32 = 0x7E02_0000;
/// Socket families a sandboxed program may use.
const SOCKET_FAMILIES: [u32; 4] = [
    libc::AF_UNIX as u32,
    libc::AF_INET as u32,
    libc::AF_INET6 as u32,
    libc::AF_NETLINK as u32,
];
/// personality() values Docker allows: PER_LINUX, PER_LINUX32, UNAME26, PER_LINUX32|UNAME26
/// and the query.
const PERSONALITIES: [u32; 5] = [0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

const SYS_CLONE: u32 = 56;
const SYS_CLONE3: u32 = 435;
const SYS_SOCKET: u32 = 41;
const SYS_SOCKETPAIR: u32 = 53;
const SYS_PERSONALITY: u32 = 135;
const SYS_IOCTL: u32 = 16;

/// Docker's default allowlist on x86_64 (number, name), minus the calls above that are
/// filtered by argument or refused here.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
pub(crate) const ALLOWED: &[(u32, &str)] = &[
    (0, "read"), (1, "write"), (2, "open"), (3, "close"), (4, "stat"), (5, "fstat"), (6, "lstat"),
    (7, "poll"), (8, "lseek"), (9, "mmap"), (10, "mprotect"), (11, "munmap"), (12, "brk"),
    (13, "rt_sigaction"), (14, "rt_sigprocmask"), (15, "rt_sigreturn"), (16, "ioctl"),
    (17, "pread64"), (18, "pwrite64"), (19, "readv"), (20, "writev"), (21, "access"), (22, "pipe"),
    (23, "select"), (24, "sched_yield"), (25, "mremap"), (26, "msync"), (27, "mincore"),
    (28, "madvise"), (29, "shmget"), (30, "shmat"), (31, "shmctl"), (32, "dup"), (33, "dup2"),
    (34, "pause"), (35, "nanosleep"), (36, "getitimer"), (37, "alarm"), (38, "setitimer"),
    (39, "getpid"), (40, "sendfile"), (42, "connect"), (43, "accept"), (44, "sendto"),
    (45, "recvfrom"), (46, "sendmsg"), (47, "recvmsg"), (48, "shutdown"), (49, "bind"),
    (50, "listen"), (51, "getsockname"), (52, "getpeername"), (53, "socketpair"),
    (54, "setsockopt"), (55, "getsockopt"), (57, "fork"), (58, "vfork"), (59, "execve"),
    (60, "exit"), (61, "wait4"), (62, "kill"), (63, "uname"), (64, "semget"), (65, "semop"),
    (66, "semctl"), (67, "shmdt"), (68, "msgget"), (69, "msgsnd"), (70, "msgrcv"), (71, "msgctl"),
    (72, "fcntl"), (73, "flock"), (74, "fsync"), (75, "fdatasync"), (76, "truncate"),
    (77, "ftruncate"), (78, "getdents"), (79, "getcwd"), (80, "chdir"), (81, "fchdir"),
    (82, "rename"), (83, "mkdir"), (84, "rmdir"), (85, "creat"), (86, "link"), (87, "unlink"),
    (88, "symlink"), (89, "readlink"), (90, "chmod"), (91, "fchmod"), (92, "chown"),
    (93, "fchown"), (94, "lchown"), (95, "umask"), (96, "gettimeofday"), (97, "getrlimit"),
    (98, "getrusage"), (99, "sysinfo"), (100, "times"), (102, "getuid"), (104, "getgid"),
    (105, "setuid"), (106, "setgid"), (107, "geteuid"), (108, "getegid"), (109, "setpgid"),
    (110, "getppid"), (111, "getpgrp"), (112, "setsid"), (113, "setreuid"), (114, "setregid"),
    (115, "getgroups"), (116, "setgroups"), (117, "setresuid"), (118, "getresuid"),
    (119, "setresgid"), (120, "getresgid"), (121, "getpgid"), (122, "setfsuid"), (123, "setfsgid"),
    (124, "getsid"), (125, "capget"), (126, "capset"), (127, "rt_sigpending"),
    (128, "rt_sigtimedwait"), (129, "rt_sigqueueinfo"), (130, "rt_sigsuspend"),
    (131, "sigaltstack"), (132, "utime"), (133, "mknod"), (137, "statfs"), (138, "fstatfs"),
    (140, "getpriority"), (141, "setpriority"), (142, "sched_setparam"), (143, "sched_getparam"),
    (144, "sched_setscheduler"), (145, "sched_getscheduler"), (146, "sched_get_priority_max"),
    (147, "sched_get_priority_min"), (148, "sched_rr_get_interval"), (149, "mlock"),
    (150, "munlock"), (151, "mlockall"), (152, "munlockall"), (154, "modify_ldt"), (157, "prctl"),
    (158, "arch_prctl"), (160, "setrlimit"), (162, "sync"), (186, "gettid"), (187, "readahead"),
    (188, "setxattr"), (189, "lsetxattr"), (190, "fsetxattr"), (191, "getxattr"),
    (192, "lgetxattr"), (193, "fgetxattr"), (194, "listxattr"), (195, "llistxattr"),
    (196, "flistxattr"), (197, "removexattr"), (198, "lremovexattr"), (199, "fremovexattr"),
    (200, "tkill"), (201, "time"), (202, "futex"), (203, "sched_setaffinity"),
    (204, "sched_getaffinity"), (205, "set_thread_area"), (206, "io_setup"), (207, "io_destroy"),
    (208, "io_getevents"), (209, "io_submit"), (210, "io_cancel"), (211, "get_thread_area"),
    (213, "epoll_create"), (214, "epoll_ctl_old"), (215, "epoll_wait_old"),
    (216, "remap_file_pages"), (217, "getdents64"), (218, "set_tid_address"),
    (219, "restart_syscall"), (220, "semtimedop"), (221, "fadvise64"), (222, "timer_create"),
    (223, "timer_settime"), (224, "timer_gettime"), (225, "timer_getoverrun"),
    (226, "timer_delete"), (228, "clock_gettime"), (229, "clock_getres"), (230, "clock_nanosleep"),
    (231, "exit_group"), (232, "epoll_wait"), (233, "epoll_ctl"), (234, "tgkill"), (235, "utimes"),
    (240, "mq_open"), (241, "mq_unlink"), (242, "mq_timedsend"), (243, "mq_timedreceive"),
    (244, "mq_notify"), (245, "mq_getsetattr"), (247, "waitid"), (251, "ioprio_set"),
    (252, "ioprio_get"), (253, "inotify_init"), (254, "inotify_add_watch"),
    (255, "inotify_rm_watch"), (257, "openat"), (258, "mkdirat"), (259, "mknodat"),
    (260, "fchownat"), (261, "futimesat"), (262, "newfstatat"), (263, "unlinkat"),
    (264, "renameat"), (265, "linkat"), (266, "symlinkat"), (267, "readlinkat"), (268, "fchmodat"),
    (269, "faccessat"), (270, "pselect6"), (271, "ppoll"), (273, "set_robust_list"),
    (274, "get_robust_list"), (275, "splice"), (276, "tee"), (277, "sync_file_range"),
    (278, "vmsplice"), (280, "utimensat"), (281, "epoll_pwait"), (282, "signalfd"),
    (283, "timerfd_create"), (284, "eventfd"), (285, "fallocate"), (286, "timerfd_settime"),
    (287, "timerfd_gettime"), (288, "accept4"), (289, "signalfd4"), (290, "eventfd2"),
    (291, "epoll_create1"), (292, "dup3"), (293, "pipe2"), (294, "inotify_init1"), (295, "preadv"),
    (296, "pwritev"), (297, "rt_tgsigqueueinfo"), (299, "recvmmsg"), (301, "fanotify_mark"),
    (302, "prlimit64"), (306, "syncfs"), (307, "sendmmsg"), (309, "getcpu"),
    (314, "sched_setattr"), (315, "sched_getattr"), (316, "renameat2"), (317, "seccomp"),
    (318, "getrandom"), (319, "memfd_create"), (322, "execveat"), (324, "membarrier"),
    (325, "mlock2"), (326, "copy_file_range"), (327, "preadv2"), (328, "pwritev2"),
    (329, "pkey_mprotect"), (330, "pkey_alloc"), (331, "pkey_free"), (332, "statx"),
    (333, "io_pgetevents"), (334, "rseq"), (335, "uretprobe"), (424, "pidfd_send_signal"),
    (434, "pidfd_open"), (436, "close_range"), (437, "openat2"), (439, "faccessat2"),
    (441, "epoll_pwait2"), (444, "landlock_create_ruleset"), (445, "landlock_add_rule"),
    (446, "landlock_restrict_self"), (447, "memfd_secret"), (448, "process_mrelease"),
    (449, "futex_waitv"), (451, "cachestat"), (452, "fchmodat2"), (453, "map_shadow_stack"),
    (454, "futex_wake"), (455, "futex_wait"), (456, "futex_requeue"), (457, "statmount"),
    (458, "listmount"), (462, "mseal"), (463, "setxattrat"), (464, "getxattrat"),
    (465, "listxattrat"), (466, "removexattrat"),
];

/// Whether this build knows how to filter system calls on the running architecture.
pub(crate) fn supported() -> bool {
    cfg!(target_arch = "x86_64")
}

/// A jump target while assembling: an instruction index, resolved to an offset at the end.
#[derive(Clone, Copy)]
enum Target {
    Next,
    At(usize),
}

struct Assembler {
    code: Vec<(u16, u32, Target, Target)>,
}

impl Assembler {
    fn position(&self) -> usize {
        self.code.len()
    }

    fn load(&mut self, offset: u32) {
        self.code
            .push((BPF_LD_W_ABS, offset, Target::Next, Target::Next));
    }

    fn ret(&mut self, value: u32) -> usize {
        self.code
            .push((BPF_RET_K, value, Target::Next, Target::Next));
        self.code.len() - 1
    }

    fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) -> usize {
        self.code.push((code, k, jt, jf));
        self.code.len() - 1
    }

    fn patch(&mut self, index: usize, jt: Option<usize>, jf: Option<usize>) {
        if let Some(instruction) = self.code.get_mut(index) {
            if let Some(target) = jt {
                instruction.2 = Target::At(target);
            }
            if let Some(target) = jf {
                instruction.3 = Target::At(target);
            }
        }
    }

    /// The program; None if a jump goes backwards or further than BPF's 255.
    fn finish(self) -> Option<Vec<libc::sock_filter>> {
        self.code
            .iter()
            .enumerate()
            .map(|(index, (code, k, jt, jf))| {
                let offset = |target: &Target| -> Option<u8> {
                    match target {
                        Target::Next => Some(0),
                        Target::At(at) => u8::try_from(at.checked_sub(index + 1)?).ok(),
                    }
                };
                Some(libc::sock_filter {
                    code: *code,
                    jt: offset(jt)?,
                    jf: offset(jf)?,
                    k: *k,
                })
            })
            .collect()
    }
}

/// Contiguous ranges of allowed numbers, sorted.
fn allowed_ranges() -> Vec<(u32, u32)> {
    let mut numbers: Vec<u32> = allowed_numbers().collect();
    numbers.sort_unstable();
    numbers.dedup();
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for number in numbers {
        match ranges.last_mut() {
            Some((_, high)) if *high + 1 == number => *high = number,
            _ => ranges.push((number, number)),
        }
    }
    ranges
}

#[cfg(target_arch = "x86_64")]
fn allowed_numbers() -> impl Iterator<Item = u32> {
    ALLOWED.iter().map(|(number, _)| *number).filter(|number| {
        ![
            SYS_CLONE,
            SYS_SOCKET,
            SYS_SOCKETPAIR,
            SYS_PERSONALITY,
            SYS_IOCTL,
        ]
        .contains(number)
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn allowed_numbers() -> impl Iterator<Item = u32> {
    std::iter::empty()
}

/// A binary search over `ranges` (the system call number is loaded): allow inside, EPERM
/// outside.
fn emit_search(assembler: &mut Assembler, ranges: &[(u32, u32)], deny: u32) {
    match ranges {
        [] => {
            assembler.ret(deny);
        }
        [(low, high)] => {
            let below = assembler.jump(BPF_JGE_K, *low, Target::Next, Target::Next);
            let above = assembler.jump(BPF_JGT_K, *high, Target::Next, Target::Next);
            assembler.ret(RET_ALLOW);
            let denied = assembler.ret(deny);
            assembler.patch(below, None, Some(denied));
            assembler.patch(above, Some(denied), None);
        }
        _ => {
            let middle = ranges.len() / 2;
            let (left, right) = ranges.split_at(middle);
            let split = right.first().map(|(low, _)| *low).unwrap_or(0);
            let branch = assembler.jump(BPF_JGE_K, split, Target::Next, Target::Next);
            emit_search(assembler, left, deny);
            let right_start = assembler.position();
            assembler.patch(branch, Some(right_start), None);
            emit_search(assembler, right, deny);
        }
    }
}

/// Allows the call if the loaded argument word is one of `values`, else `deny`.
fn emit_one_of(assembler: &mut Assembler, values: &[u32], deny: u32) {
    let mut matches = Vec::new();
    for value in values {
        matches.push(assembler.jump(BPF_JEQ_K, *value, Target::Next, Target::Next));
    }
    assembler.ret(deny);
    let allow = assembler.ret(RET_ALLOW);
    for index in matches {
        assembler.patch(index, Some(allow), None);
    }
}

/// Builds the filter program. The instructions are returned as a vector that the caller keeps
/// alive while the child installs it. Empty where [`supported`] is false.
pub(crate) fn build_filter() -> Vec<libc::sock_filter> {
    if !supported() {
        return Vec::new();
    }
    build(true).unwrap_or_default()
}

/// The filter; `enforce` false gives a program that allows everything the same way (tests
/// prove with it that the filter is what refuses a call).
fn build(enforce: bool) -> Option<Vec<libc::sock_filter>> {
    #[cfg(target_arch = "x86_64")]
    let arch = AUDIT_ARCH;
    #[cfg(not(target_arch = "x86_64"))]
    let arch = 0;
    let eperm = if enforce {
        RET_ERRNO | libc::EPERM as u32
    } else {
        RET_ALLOW
    };
    let enosys = RET_ERRNO | libc::ENOSYS as u32;
    let kill = if enforce { RET_KILL_PROCESS } else { RET_ALLOW };
    let mut assembler = Assembler { code: Vec::new() };
    // A foreign architecture's numbers (i386 through int 0x80) mean something else: kill.
    assembler.load(DATA_ARCH);
    let native = assembler.jump(BPF_JEQ_K, arch, Target::Next, Target::Next);
    let killed = assembler.ret(kill);
    assembler.patch(native, None, Some(killed));
    let start = assembler.position();
    assembler.patch(native, Some(start), None);
    assembler.load(DATA_NR);
    // x32 system calls: kill.
    let x32 = assembler.jump(BPF_JGE_K, X32_SYSCALL_BIT, Target::Next, Target::Next);
    let x32_killed = assembler.ret(kill);
    assembler.patch(x32, None, Some(x32_killed + 1));
    // Newer than this table: ENOSYS, as for clone3 (whose flags BPF cannot read).
    let newer = assembler.jump(BPF_JGT_K, NEWEST_SYSCALL, Target::Next, Target::Next);
    let clone3 = assembler.jump(BPF_JEQ_K, SYS_CLONE3, Target::Next, Target::Next);
    let after = assembler.jump(BPF_JEQ_K, 0, Target::Next, Target::Next);
    let no_such_call = assembler.ret(enosys);
    assembler.patch(newer, Some(no_such_call), None);
    assembler.patch(clone3, Some(no_such_call), None);
    // A constant-false jump over the ENOSYS return (BPF has no unconditional jump with K).
    let clone_check = assembler.position();
    assembler.patch(after, Some(clone_check), Some(clone_check));
    // clone: no namespace flags.
    let not_clone = assembler.jump(BPF_JEQ_K, SYS_CLONE, Target::Next, Target::Next);
    assembler.load(DATA_ARG0_LOW);
    let namespaces = assembler.jump(
        BPF_JSET_K,
        CLONE_NAMESPACE_FLAGS,
        Target::Next,
        Target::Next,
    );
    let allowed_clone = assembler.ret(RET_ALLOW);
    let refused_clone = assembler.ret(eperm);
    assembler.patch(namespaces, Some(refused_clone), Some(allowed_clone));
    let socket_check = assembler.position();
    assembler.patch(not_clone, None, Some(socket_check));
    // socket, socketpair: only the families above.
    let is_socket = assembler.jump(BPF_JEQ_K, SYS_SOCKET, Target::Next, Target::Next);
    let is_socketpair = assembler.jump(BPF_JEQ_K, SYS_SOCKETPAIR, Target::Next, Target::Next);
    let not_socket = assembler.jump(BPF_JEQ_K, 0, Target::Next, Target::Next);
    let family = assembler.position();
    assembler.patch(is_socket, Some(family), None);
    assembler.patch(is_socketpair, Some(family), None);
    assembler.load(DATA_ARG0_LOW);
    emit_one_of(&mut assembler, &SOCKET_FAMILIES, eperm);
    let personality_check = assembler.position();
    assembler.patch(not_socket, Some(personality_check), Some(personality_check));
    // personality: Docker's values.
    let not_personality = assembler.jump(BPF_JEQ_K, SYS_PERSONALITY, Target::Next, Target::Next);
    assembler.load(DATA_ARG0_LOW);
    emit_one_of(&mut assembler, &PERSONALITIES, eperm);
    let ioctl_check = assembler.position();
    assembler.patch(not_personality, None, Some(ioctl_check));
    // ioctl: anything but TIOCSTI.
    let not_ioctl = assembler.jump(BPF_JEQ_K, SYS_IOCTL, Target::Next, Target::Next);
    assembler.load(DATA_ARG1_LOW);
    let tiocsti = assembler.jump(BPF_JEQ_K, libc::TIOCSTI as u32, Target::Next, Target::Next);
    let allowed_ioctl = assembler.ret(RET_ALLOW);
    let refused_ioctl = assembler.ret(eperm);
    assembler.patch(tiocsti, Some(refused_ioctl), Some(allowed_ioctl));
    let search = assembler.position();
    assembler.patch(not_ioctl, None, Some(search));
    emit_search(&mut assembler, &allowed_ranges(), eperm);
    assembler.finish()
}

/// The filter with every refusal but ENOSYS turned into "allow" (same structure): for tests
/// that prove a call succeeds without the filter.
pub(crate) fn build_permissive_filter() -> Vec<libc::sock_filter> {
    if !supported() {
        return Vec::new();
    }
    build(false).unwrap_or_default()
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Runs the classic BPF program on one system call (a tiny interpreter of the opcodes the
    /// builder emits).
    fn run(program: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 2]) -> u32 {
        let mut accumulator = 0u32;
        let mut pc = 0usize;
        loop {
            let instruction = program[pc];
            let k = instruction.k;
            let (jt, jf) = (instruction.jt as usize, instruction.jf as usize);
            pc += 1;
            match instruction.code {
                BPF_LD_W_ABS => {
                    accumulator = match k {
                        DATA_NR => nr,
                        DATA_ARCH => arch,
                        DATA_ARG0_LOW => args[0] as u32,
                        DATA_ARG1_LOW => args[1] as u32,
                        other => panic!("unexpected load {other}"),
                    }
                }
                BPF_RET_K => return k,
                BPF_JEQ_K => pc += if accumulator == k { jt } else { jf },
                BPF_JGT_K => pc += if accumulator > k { jt } else { jf },
                BPF_JGE_K => pc += if accumulator >= k { jt } else { jf },
                BPF_JSET_K => pc += if accumulator & k != 0 { jt } else { jf },
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn verdict(nr: u32, args: [u64; 2]) -> u32 {
        run(&build_filter(), AUDIT_ARCH, nr, args)
    }

    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = RET_ERRNO | libc::ENOSYS as u32;

    #[test]
    fn filter_fits_in_a_bpf_program() {
        let program = build_filter();
        assert!(!program.is_empty(), "a jump does not fit");
        assert!(program.len() < 4096);
    }

    #[test]
    fn every_allowed_call_is_allowed_and_every_other_known_call_refused() {
        for (number, name) in ALLOWED {
            let args = match *number {
                SYS_SOCKET | SYS_SOCKETPAIR => [libc::AF_UNIX as u64, 0],
                _ => [0, 0],
            };
            assert_eq!(verdict(*number, args), RET_ALLOW, "{name}");
        }
        for number in 0..=NEWEST_SYSCALL {
            // clone, personality and socket are allowed by their arguments (below).
            if ![SYS_CLONE, SYS_PERSONALITY, SYS_SOCKET].contains(&number)
                && !ALLOWED.iter().any(|(allowed, _)| *allowed == number)
            {
                let expected = if number == SYS_CLONE3 { ENOSYS } else { EPERM };
                assert_eq!(verdict(number, [0, 0]), expected, "syscall {number}");
            }
        }
        assert_eq!(verdict(NEWEST_SYSCALL + 1, [0, 0]), ENOSYS);
        assert_eq!(verdict(1000, [0, 0]), ENOSYS);
    }

    #[test]
    fn arguments_are_filtered_like_dockers_profile() {
        let threads = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(verdict(SYS_CLONE, [threads, 0]), RET_ALLOW);
        assert_eq!(verdict(SYS_CLONE, [libc::CLONE_NEWUSER as u64, 0]), EPERM);
        assert_eq!(verdict(SYS_CLONE, [libc::CLONE_NEWNET as u64, 0]), EPERM);
        for family in [
            libc::AF_UNIX,
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_NETLINK,
        ] {
            assert_eq!(verdict(SYS_SOCKET, [family as u64, 1]), RET_ALLOW);
        }
        for family in [
            libc::AF_VSOCK,
            libc::AF_ALG,
            libc::AF_PACKET,
            libc::AF_TIPC,
            21,
        ] {
            assert_eq!(verdict(SYS_SOCKET, [family as u64, 1]), EPERM, "{family}");
        }
        assert_eq!(verdict(SYS_SOCKETPAIR, [libc::AF_TIPC as u64, 1]), EPERM);
        assert_eq!(verdict(SYS_PERSONALITY, [0xffff_ffff, 0]), RET_ALLOW);
        assert_eq!(verdict(SYS_PERSONALITY, [0x0040_0000, 0]), EPERM);
        assert_eq!(verdict(SYS_IOCTL, [0, libc::TIOCSTI]), EPERM);
        assert_eq!(verdict(SYS_IOCTL, [0, libc::TCGETS]), RET_ALLOW);
    }

    #[test]
    fn foreign_architectures_and_x32_are_killed() {
        let program = build_filter();
        assert_eq!(run(&program, 0x4000_0003, 1, [0, 0]), RET_KILL_PROCESS);
        assert_eq!(
            run(&program, AUDIT_ARCH, X32_SYSCALL_BIT | 1, [0, 0]),
            RET_KILL_PROCESS
        );
    }

    #[test]
    fn the_permissive_filter_refuses_nothing() {
        let program = build_permissive_filter();
        for number in 0..=NEWEST_SYSCALL {
            if number != SYS_CLONE3 && number <= NEWEST_SYSCALL {
                assert_eq!(run(&program, AUDIT_ARCH, number, [0, 0]), RET_ALLOW);
            }
        }
    }
}
