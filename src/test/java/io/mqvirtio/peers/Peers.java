package io.mqvirtio.peers;

import static org.junit.jupiter.api.Assertions.fail;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;

/**
 * Finding the real peers (QEMU, DPDK, the guest kernel) for the interop tests. In CI a missing peer fails the test
 * loudly (the project's scripts install them); on a developer machine without root it is skipped with a message.
 */
public final class Peers {
    private Peers() {}

    public static boolean inCi() {
        return "true".equals(System.getenv("CI"));
    }

    public static boolean isRoot() {
        return "root".equals(System.getProperty("user.name"));
    }

    /** The path of {@code binary} on PATH (or an absolute path), or a failed/skipped test. */
    public static Path require(String binary, String what) {
        Path found = which(binary);
        if (found == null) {
            missing(what + " (" + binary + ") is not installed: run scripts/install-deps.sh as root");
        }
        return found;
    }

    /** {@code file} (a library a peer needs, e.g. a Python module Debian installs), or a failed/skipped test. */
    public static void requireFile(Path file, String what) {
        if (!Files.exists(file)) {
            missing(what + " (" + file + ") is not installed: run scripts/install-deps.sh as root");
        }
    }

    public static void requireRoot(String why) {
        if (!isRoot()) {
            missing(why + " needs root");
        }
    }

    static void missing(String message) {
        if (inCi() || isRoot()) {
            fail(message);
        }
        assumeTrue(false, message);
    }

    public static Path which(String binary) {
        if (binary.startsWith("/")) {
            return Files.isExecutable(Path.of(binary)) ? Path.of(binary) : null;
        }
        for (String dir : System.getenv().getOrDefault("PATH", "/usr/bin:/bin").split(":")) {
            Path p = Path.of(dir, binary);
            if (Files.isExecutable(p)) {
                return p;
            }
        }
        for (String dir : new String[] {"/usr/sbin", "/sbin", "/usr/bin", "/usr/local/bin"}) {
            Path p = Path.of(dir, binary);
            if (Files.isExecutable(p)) {
                return p;
            }
        }
        return null;
    }

    /** Stops a process: SIGTERM, then SIGKILL after {@code graceMillis}; its descendants too. */
    public static void stop(Process p, long graceMillis) {
        if (p == null || !p.isAlive()) {
            return;
        }
        p.descendants().forEach(ProcessHandle::destroy);
        p.destroy();
        try {
            if (!p.waitFor(graceMillis, TimeUnit.MILLISECONDS)) {
                p.descendants().forEach(ProcessHandle::destroyForcibly);
                p.destroyForcibly().waitFor(5, TimeUnit.SECONDS);
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** Waits until {@code log} contains {@code marker}; fails with the log's tail after {@code seconds}. */
    public static void waitForLine(Path log, String marker, int seconds) throws IOException, InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
        while (!(Files.exists(log) && Files.readString(log).contains(marker))) {
            if (System.nanoTime() > deadline) {
                throw new AssertionError("no " + marker + " in " + log + ":\n" + tail(log, 30));
            }
            Thread.sleep(200);
        }
    }

    public static String tail(Path log, int lines) {
        try {
            var all = Files.readAllLines(log);
            return String.join("\n", all.subList(Math.max(0, all.size() - lines), all.size()));
        } catch (IOException e) {
            return "(no log: " + e.getMessage() + ")";
        }
    }
}
