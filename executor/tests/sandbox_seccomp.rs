//! The seccomp allowlist under real programs: what language runtimes need works, and calls
//! only the filter refuses are refused (and succeed, or get the kernel's own answer, with the
//! filter made permissive: the proof that the filter is what refuses them).

mod run_support;

use std::collections::BTreeMap;
use std::sync::Arc;

use run_support::{code_request, root_or_skip, sh, TestHost};
use shoal_executor::clock::SystemClock;
use shoal_executor::run::{self, Languages, RunContext, RunFile, RunPolicy, RunRequest, Verdict};
use shoal_executor::sandbox::{SandboxHost, SandboxHostConfig};

/// Hello world in each language `Languages::discover` knows.
fn hello(language: &str) -> Option<&'static str> {
    Some(match language {
        "sh" | "bash" => "echo hello",
        "python" => "print('hello')",
        "node" => "console.log('hello')",
        "ruby" => "puts 'hello'",
        "perl" => "print \"hello\\n\";",
        "php" => "<?php echo \"hello\\n\";",
        "lua" => "print('hello')",
        "tcl" => "puts hello",
        _ => return None,
    })
}

#[tokio::test]
async fn language_runtimes_threads_pipelines_and_gcc_work_under_the_allowlist() -> anyhow::Result<()>
{
    if !root_or_skip("language_runtimes_threads_pipelines_and_gcc_work_under_the_allowlist") {
        return Ok(());
    }
    let host = TestHost::start("seccomp-programs")?;
    tracing::info!("--- every discovered language says hello");
    for language in host.context.languages.list() {
        let code = hello(&language.name)
            .ok_or_else(|| anyhow::anyhow!("no hello world for {}", language.name))?;
        let result = host
            .run(
                &code_request(&language.name, code),
                &format!("hello-{}", language.name),
            )
            .await?;
        assert_eq!(result.verdict, Verdict::Ok, "{}: {result:?}", language.name);
        assert_eq!(
            result.stdout.trim(),
            "hello",
            "{}: {result:?}",
            language.name
        );
    }
    tracing::info!("--- Python with threads and a process pool");
    let code = "import threading, concurrent.futures, subprocess\n\
                results = []\n\
                threads = [threading.Thread(target=lambda i=i: results.append(i * i)) for i in range(8)]\n\
                [t.start() for t in threads]; [t.join() for t in threads]\n\
                with concurrent.futures.ThreadPoolExecutor(4) as pool:\n\
                \x20   total = sum(pool.map(lambda x: x + 1, range(100)))\n\
                print(sorted(results)[-1], total, subprocess.run(['true']).returncode)\n";
    let result = host.run(&code_request("python", code), "threads").await?;
    assert_eq!(result.verdict, Verdict::Ok, "{result:?}");
    assert_eq!(result.stdout.trim(), "49 5050 0", "{result:?}");
    tracing::info!("--- a sh pipeline");
    let result = host
        .run(
            &sh("seq 1 1000 | grep 7 | sort -r | head -n 3 | tr '\\n' ' '"),
            "pipeline",
        )
        .await?;
    assert_eq!(result.verdict, Verdict::Ok, "{result:?}");
    assert_eq!(result.stdout.trim(), "997 987 979", "{result:?}");
    if std::path::Path::new("/usr/bin/gcc").exists() {
        tracing::info!("--- gcc compiles and the program runs, all in the sandbox");
        let request = RunRequest {
            files: Some(vec![RunFile {
                path: "hello.c".to_string(),
                content: "#include <pthread.h>\n#include <stdio.h>\n\
                          static void *work(void *arg) { return arg; }\n\
                          int main(void) { pthread_t t; pthread_create(&t, 0, work, 0); \
                          pthread_join(t, 0); puts(\"compiled hello\"); return 0; }\n"
                    .to_string(),
                executable: false,
            }]),
            memory_bytes: Some(512 << 20),
            timeout_ms: Some(30_000),
            ..sh("gcc -O1 -pthread -o /tmp/hello /tmp/hello.c && /tmp/hello")
        };
        let result = host.run(&request, "gcc").await?;
        assert_eq!(result.verdict, Verdict::Ok, "{result:?}");
        assert_eq!(result.stdout.trim(), "compiled hello", "{result:?}");
    } else {
        eprintln!("gcc is not installed: the compiled-program case is not run");
    }
    host.assert_clean();
    Ok(())
}

/// A C program that tries each call in a child of its own and prints `<name> ok`,
/// `<name> refused <errno text>` or `<name> killed <signal>`.
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Each attempt runs in a child of its own: a killed child is an answer too. */
static void attempt(const char *name, int (*call)(void)) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int rc = call();
        if (rc < 0) { printf("%s refused %s\n", name, strerror(errno)); }
        else { printf("%s ok\n", name); }
        fflush(stdout);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) { printf("%s killed %d\n", name, WTERMSIG(status)); }
}

static int vsock(void) { return socket(40, SOCK_STREAM, 0); }
static int alg(void) { return socket(38, SOCK_SEQPACKET, 0); }
static int tipc(void) { return socket(30, SOCK_RDM, 0); }
static int read_implies_exec(void) {
    if (personality(READ_IMPLIES_EXEC) < 0) return -1;
    return (personality(0xffffffff) & READ_IMPLIES_EXEC) ? 0 : (errno = EINVAL, -1);
}
static int clone_newuser(void) {
    long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid < 0) return -1;
    waitpid(pid, 0, 0);
    return 0;
}
static int x32_getpid(void) { return syscall(0x40000000 | SYS_getpid); }
static int i386_getpid(void) {
    long ret;
    __asm__ volatile ("int $0x80" : "=a"(ret) : "a"(20) : "memory");
    if (ret < 0) { errno = -ret; return -1; }
    return 0;
}
static int unix_socket(void) { return socket(AF_UNIX, SOCK_STREAM, 0); }
static int thread_clone(void) {
    long pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid < 0) return -1;
    waitpid(pid, 0, 0);
    return 0;
}

int main(void) {
    attempt("socket-unix", unix_socket);
    attempt("clone-plain", thread_clone);
    attempt("socket-vsock", vsock);
    attempt("socket-alg", alg);
    attempt("socket-tipc", tipc);
    attempt("personality-read-implies-exec", read_implies_exec);
    attempt("clone-newuser", clone_newuser);
    attempt("x32-syscall", x32_getpid);
    attempt("int80-i386", i386_getpid);
    return 0;
}
"#;

/// The calls only the filter refuses: (name, what the filter answers).
const FILTERED: &[(&str, &str)] = &[
    ("socket-vsock", "refused Operation not permitted"),
    ("socket-alg", "refused Operation not permitted"),
    ("socket-tipc", "refused Operation not permitted"),
    (
        "personality-read-implies-exec",
        "refused Operation not permitted",
    ),
    ("clone-newuser", "refused Operation not permitted"),
    ("x32-syscall", "killed 31"),
    ("int80-i386", "killed 31"),
];

async fn probe(permissive: bool) -> anyhow::Result<(BTreeMap<String, String>, TestHost)> {
    let mut host = TestHost::start(if permissive {
        "seccomp-off"
    } else {
        "seccomp-on"
    })?;
    if permissive {
        let mut config = SandboxHostConfig::new(
            format!("t{}-seccomp-off2", std::process::id()),
            host.state_path().join("permissive"),
        );
        config.permissive_seccomp_for_tests = true;
        let permissive_host = SandboxHost::start(config)?;
        host.context = RunContext {
            host: Arc::clone(&permissive_host),
            languages: Arc::new(Languages::discover()),
            policy: RunPolicy::default(),
            clock: Arc::new(SystemClock),
        };
        host.host = permissive_host;
    }
    let request = RunRequest {
        files: Some(vec![RunFile {
            path: "probe.c".to_string(),
            content: PROBE_C.to_string(),
            executable: false,
        }]),
        memory_bytes: Some(512 << 20),
        timeout_ms: Some(30_000),
        ..sh("gcc -O1 -o /tmp/probe /tmp/probe.c && /tmp/probe")
    };
    let result = run::execute(&host.context, &request, "probe").await?;
    assert_eq!(result.verdict, Verdict::Ok, "{result:?}");
    let answers = result
        .stdout
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(name, answer)| (name.to_string(), answer.to_string()))
        .collect();
    Ok((answers, host))
}

#[tokio::test]
async fn calls_only_the_filter_refuses_are_refused_and_pass_without_it() -> anyhow::Result<()> {
    if !root_or_skip("calls_only_the_filter_refuses_are_refused_and_pass_without_it") {
        return Ok(());
    }
    if !std::path::Path::new("/usr/bin/gcc").exists() {
        anyhow::bail!("this test compiles its probe with gcc, which is not installed");
    }
    let (enforced, enforced_host) = probe(false).await?;
    let (permissive, permissive_host) = probe(true).await?;
    tracing::info!(?enforced, ?permissive, "answers");
    for answers in [&enforced, &permissive] {
        assert_eq!(answers.get("socket-unix").map(String::as_str), Some("ok"));
        assert_eq!(answers.get("clone-plain").map(String::as_str), Some("ok"));
    }
    for (name, refusal) in FILTERED {
        assert_eq!(
            enforced.get(*name).map(String::as_str),
            Some(*refusal),
            "{name} with the filter: {enforced:?}"
        );
        // Without the filter: success, or the kernel's own answer where this kernel lacks the
        // feature (no AF_ALG, TIPC or x32 here), never the filter's.
        let answer = permissive
            .get(*name)
            .map(String::as_str)
            .unwrap_or("missing");
        assert!(
            answer == "ok"
                || (answer.starts_with("refused ") && answer != "refused Operation not permitted"),
            "{name} without the filter: {answer}"
        );
    }
    // What this machine proves outright (each succeeds without the filter).
    for name in [
        "socket-vsock",
        "personality-read-implies-exec",
        "clone-newuser",
        "int80-i386",
    ] {
        if permissive.get(name).map(String::as_str) != Some("ok") {
            eprintln!("{name} does not succeed on this kernel even without the filter");
        }
    }
    enforced_host.assert_clean();
    permissive_host.assert_clean();
    Ok(())
}
