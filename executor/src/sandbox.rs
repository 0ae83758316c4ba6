//! Namespaces, cgroups and seccomp around every user process (filled in by the sandbox work).
