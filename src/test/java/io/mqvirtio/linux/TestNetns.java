package io.mqvirtio.linux;

import static org.junit.jupiter.api.Assumptions.assumeTrue;

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
 * A throwaway network namespace for tests that need the kernel's network stack (TAP): made with {@code ip netns
 * add}, deleted on close. Whatever a test creates in it (devices, addresses) never touches the host's namespace.
 *
 * <p>{@link #inside} runs code on one dedicated thread that has entered the namespace (setns moves a single
 * thread): TAP queues opened and sockets created there belong to the namespace, and their descriptors keep it
 * when used from other threads. Tests that cannot have one (not root, no {@code ip}) are skipped, not failed.
 */
public final class TestNetns implements AutoCloseable {
    private static final long COMMAND_TIMEOUT_S = 10;

    private final String name;
    private final ExecutorService thread;

    private TestNetns(String name) {
        this.name = name;
        this.thread = Executors.newSingleThreadExecutor(
                r -> Thread.ofPlatform().name("netns-" + name).daemon().unstarted(r));
    }

    /** Creates {@code mqv-test-<random>}, or skips the calling test with the reason it cannot. */
    public static TestNetns create() throws Exception {
        assumeTrue(isRoot(), "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create a network namespace");
        assumeTrue(Files.isExecutable(Path.of("/usr/sbin/ip")) || Files.isExecutable(Path.of("/sbin/ip"))
                || Files.isExecutable(Path.of("/usr/bin/ip")), "needs iproute2's ip command");
        String name = "mqv-test-" + Long.toHexString(ThreadLocalRandom.current().nextLong() >>> 16);
        Result r = run(List.of("ip", "netns", "add", name));
        assumeTrue(r.exit == 0, () -> "cannot create a network namespace here: " + r.output);
        TestNetns ns = new TestNetns(name);
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

    public static boolean isRoot() throws IOException {
        return (int) Files.getAttribute(Path.of("/proc/self"), "unix:uid") == 0;
    }

    public String name() {
        return name;
    }

    /** Runs {@code task} on the thread that lives in the namespace. */
    public <T> T inside(Callable<T> task) throws Exception {
        try {
            return thread.submit(task).get(COMMAND_TIMEOUT_S, TimeUnit.SECONDS);
        } catch (ExecutionException e) {
            if (e.getCause() instanceof Exception x) {
                throw x;
            }
            throw e;
        }
    }

    /** {@code ip -n NAME args...}; throws with the command's output if it fails. */
    public String ip(String... args) throws Exception {
        List<String> cmd = new ArrayList<>(List.of("ip", "-n", name));
        cmd.addAll(List.of(args));
        return check(cmd);
    }

    /** {@code ip netns exec NAME command...}, e.g. to read /sys/class/net inside the namespace. */
    public String exec(String... command) throws Exception {
        List<String> cmd = new ArrayList<>(List.of("ip", "netns", "exec", name));
        cmd.addAll(List.of(command));
        return check(cmd);
    }

    private static String check(List<String> cmd) throws Exception {
        Result r = run(cmd);
        if (r.exit != 0) {
            throw new IllegalStateException(String.join(" ", cmd) + " exited " + r.exit + ": " + r.output);
        }
        return r.output;
    }

    private record Result(int exit, String output) {}

    private static Result run(List<String> cmd) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        try {
            p.getOutputStream().close();
            if (!p.waitFor(COMMAND_TIMEOUT_S, TimeUnit.SECONDS)) {
                throw new IllegalStateException(
                        String.join(" ", cmd) + " did not finish in " + COMMAND_TIMEOUT_S + " s");
            }
            String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
            return new Result(p.exitValue(), out);
        } finally {
            p.destroyForcibly();
        }
    }

    /**
     * Ends the namespace's thread, then deletes the namespace. Close the TAP queues first: a device lives until its
     * last queue closes, and the namespace until the device and the thread are gone.
     */
    @Override
    public void close() throws IOException {
        thread.shutdownNow();
        try {
            thread.awaitTermination(COMMAND_TIMEOUT_S, TimeUnit.SECONDS);
            Result r = run(List.of("ip", "netns", "del", name));
            if (r.exit != 0) {
                throw new IllegalStateException("ip netns del " + name + ": " + r.output);
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted while deleting network namespace " + name, e);
        }
    }
}
