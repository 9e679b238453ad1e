package io.mqvirtio.capture;

import io.mqvirtio.peers.Peers;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.concurrent.TimeUnit;

/**
 * A real file system that misbehaves on command, for the capture's disk: {@code faultyfs.py} (FUSE, fusepy) shows
 * the files of {@link #backing} at {@link #mount}, and its writes can be made to hang, crawl, or fail with EIO or
 * ENOSPC ({@link #mode}), or the whole daemon stopped ({@link #freeze}). Mounted in a directory of the test's own;
 * {@link #close} lets whatever waits go, unmounts (lazily, bounded) and ends the daemon.
 *
 * <p>The two ways to hang differ as the kernel sees them: a request the daemon has read and holds ({@code hang},
 * {@code hangall}) is waited for uninterruptibly, even by a process that was killed, which cannot exit until the
 * daemon answers; a request a frozen daemon never read is waited for killably, as an NFS hard mount's are (a dead
 * server): a process that exits, or is killed, leaves it.
 */
public final class FaultyFs implements AutoCloseable {
    private final Path dir;
    private final Path mount;
    private final Path backing;
    private final Path ctl;
    private final Process daemon;

    private FaultyFs(Path dir, Path mount, Path backing, Path ctl, Process daemon) {
        this.dir = dir;
        this.mount = mount;
        this.backing = backing;
        this.ctl = ctl;
        this.daemon = daemon;
    }

    /** Mounts one under {@code dir} (made by the caller; not under the mount itself). */
    public static FaultyFs mount(Path dir) throws IOException, InterruptedException {
        Peers.requireRoot("mounting a FUSE file system");
        Path python = Peers.require("/usr/bin/python3", "Debian's Python 3 (python3)");
        Peers.requireFile(Path.of("/usr/lib/python3/dist-packages/fusepy.py"), "fusepy (python3-fusepy)");
        Peers.requireFile(Path.of("/dev/fuse"), "FUSE (/dev/fuse; fuse3)");
        Path script = dir.resolve("faultyfs.py");
        try (InputStream in = FaultyFs.class.getResourceAsStream("faultyfs.py")) {
            Files.copy(in, script, StandardCopyOption.REPLACE_EXISTING);
        }
        Path mount = Files.createDirectories(dir.resolve("mnt"));
        Path backing = Files.createDirectories(dir.resolve("backing"));
        Path ctl = Files.writeString(dir.resolve("ctl"), "ok\n");
        Process p = new ProcessBuilder(python.toString(), script.toString(), backing.toString(), mount.toString(),
                ctl.toString()).redirectErrorStream(true).redirectOutput(dir.resolve("faultyfs.log").toFile()).start();
        FaultyFs fs = new FaultyFs(dir, mount, backing, ctl, p);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (!fs.mounted()) {
            if (!p.isAlive() || System.nanoTime() > deadline) {
                fs.close();
                throw new AssertionError("faultyfs did not mount: " + Files.readString(dir.resolve("faultyfs.log")));
            }
            Thread.sleep(20);
        }
        return fs;
    }

    private boolean mounted() throws IOException {
        String m = " " + mount + " ";
        return Files.readAllLines(Path.of("/proc/self/mountinfo")).stream().anyMatch(l -> l.contains(m)
                && l.contains(" - fuse"));
    }

    public Path mount() {
        return mount;
    }

    public Path backing() {
        return backing;
    }

    /** Sets the mode (see faultyfs.py: ok, hang, hangall, crawl MS, eio, enospc), in effect when this returns. */
    public void mode(String mode) throws IOException, InterruptedException {
        Path tmp = dir.resolve("ctl.tmp");
        Files.writeString(tmp, mode + "\n");
        Files.move(tmp, ctl, StandardCopyOption.ATOMIC_MOVE);
        Thread.sleep(150); // the daemon reads it every 20 ms
    }

    /** Stops the daemon (SIGSTOP): nothing more is read from the kernel; every later operation waits, killably. */
    public void freeze() {
        signal(19); // SIGSTOP
    }

    /** Lets a frozen daemon go on (SIGCONT). */
    public void thaw() {
        signal(18); // SIGCONT
    }

    private static final java.lang.invoke.MethodHandle KILL = java.lang.foreign.Linker.nativeLinker().downcallHandle(
            java.lang.foreign.Linker.nativeLinker().defaultLookup().find("kill").orElseThrow(),
            java.lang.foreign.FunctionDescriptor.of(java.lang.foreign.ValueLayout.JAVA_INT,
                    java.lang.foreign.ValueLayout.JAVA_INT, java.lang.foreign.ValueLayout.JAVA_INT));

    /**
     * kill(2) itself, not the kill command: a process started while a file on a mount that hangs is open would
     * hang (the child closes the descriptors it inherited, and close(2) flushes through the file system).
     */
    private void signal(int sig) {
        try {
            int rc = (int) KILL.invokeExact((int) daemon.pid(), sig);
            if (rc != 0 && daemon.isAlive()) {
                throw new IllegalStateException("kill " + sig + " faultyfs: failed");
            }
        } catch (Throwable e) {
            throw new IllegalStateException(e);
        }
    }

    /**
     * Lets every waiting operation go (first, with no process started: see {@link #signal}), unmounts (lazily: nothing
     * waits for the files still open) and ends the daemon.
     */
    @Override
    public void close() throws IOException, InterruptedException {
        try {
            thaw();
            mode("ok");
        } catch (IOException e) {
            // the daemon goes anyway
        }
        Process u = new ProcessBuilder("umount", "-l", mount.toString()).redirectErrorStream(true)
                .redirectOutput(ProcessBuilder.Redirect.DISCARD).start();
        if (!u.waitFor(10, TimeUnit.SECONDS)) {
            u.destroyForcibly();
        }
        Peers.stop(daemon, 5000);
    }
}
