package io.mqvirtio.bench;

import io.mqvirtio.linux.NetNs;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;

/**
 * A network namespace of the benchmark's own ({@code ip netns add mqvbench-…}), deleted on close, with one thread
 * that has entered it: a TAP device opened on that thread lives in the namespace, and nothing the benchmark sends
 * reaches the host's own interfaces.
 */
final class BenchNetns implements AutoCloseable {
    private final String name;
    private final ExecutorService thread;

    private BenchNetns(String name) {
        this.name = name;
        this.thread = Executors.newSingleThreadExecutor(r -> Thread.ofPlatform().name("netns-" + name).daemon().unstarted(r));
    }

    /** Why a namespace cannot be made here (not root, no ip command), or null if it can. */
    static String unavailableReason() {
        try {
            if ((int) Files.getAttribute(Path.of("/proc/self"), "unix:uid") != 0) {
                return "needs root (a network namespace and a TAP device)";
            }
        } catch (IOException | UnsupportedOperationException e) {
            return "cannot tell whether this is root: " + e.getMessage();
        }
        if (ipCommand() == null) {
            return "needs iproute2's ip command";
        }
        return null;
    }

    private static String ipCommand() {
        for (String p : new String[] {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
            if (Files.isExecutable(Path.of(p))) {
                return p;
            }
        }
        return null;
    }

    /**
     * Namespaces made and not yet deleted: a bench stopped by a signal (Ctrl-C, a timeout's TERM) runs no close, so a
     * shutdown hook deletes what is left here (and the TAP devices in them go with them).
     */
    private static final java.util.Set<String> LIVE = java.util.concurrent.ConcurrentHashMap.newKeySet();

    static {
        Runtime.getRuntime().addShutdownHook(Thread.ofPlatform().name("bench-netns-reaper").unstarted(() -> {
            for (String n : LIVE) {
                try {
                    run(List.of(ipCommand(), "netns", "del", n));
                } catch (IOException | RuntimeException e) {
                    // exiting anyway: the name is in the log of the run that made it
                } catch (InterruptedException e) {
                    return;
                }
            }
        }));
    }

    static BenchNetns create() throws Exception {
        String name = "mqvbench-" + Long.toHexString(ThreadLocalRandom.current().nextLong() >>> 24);
        // Known to the reaper before it exists: a signal right after `ip netns add` returned left it behind.
        LIVE.add(name);
        try {
            run(List.of(ipCommand(), "netns", "add", name));
        } catch (Exception e) {
            LIVE.remove(name);
            throw e;
        }
        BenchNetns ns = new BenchNetns(name);
        try {
            ns.inside(() -> {
                try (NetNs target = NetNs.named(name)) {
                    target.enter();
                }
                return null;
            });
        } catch (Exception | Error e) {
            ns.close();
            throw e;
        }
        return ns;
    }

    String name() {
        return name;
    }

    /** Runs {@code task} on the thread inside the namespace. */
    <T> T inside(Callable<T> task) throws Exception {
        try {
            return thread.submit(task).get(30, TimeUnit.SECONDS);
        } catch (ExecutionException e) {
            if (e.getCause() instanceof Exception x) {
                throw x;
            }
            throw e;
        }
    }

    /** {@code ip -n NAME args…}. */
    void ip(String... args) throws IOException, InterruptedException {
        List<String> cmd = new ArrayList<>(List.of(ipCommand(), "-n", name));
        cmd.addAll(List.of(args));
        run(cmd);
    }

    /** An interface's counter from {@code /proc/thread-self/net/dev} as the namespace's thread sees it. */
    long rxPackets(String ifName) throws Exception {
        return inside(() -> {
            for (String line : Files.readAllLines(Path.of("/proc/thread-self/net/dev"))) {
                int colon = line.indexOf(':');
                if (colon > 0 && line.substring(0, colon).trim().equals(ifName)) {
                    return Long.parseLong(line.substring(colon + 1).trim().split("\\s+")[1]);
                }
            }
            return -1L;
        });
    }

    private static void run(List<String> cmd) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        p.getOutputStream().close();
        if (!p.waitFor(20, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            throw new IOException(String.join(" ", cmd) + " did not finish in 20 s");
        }
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
        if (p.exitValue() != 0) {
            throw new IOException(String.join(" ", cmd) + " exited " + p.exitValue() + ": " + out);
        }
    }

    /** Ends the namespace's thread and deletes the namespace (close the TAP queues first). */
    @Override
    public void close() throws IOException, InterruptedException {
        thread.shutdownNow();
        thread.awaitTermination(10, TimeUnit.SECONDS);
        run(List.of(ipCommand(), "netns", "del", name));
        LIVE.remove(name);
    }
}
