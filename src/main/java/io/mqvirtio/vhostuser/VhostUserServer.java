package io.mqvirtio.vhostuser;

import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.UnixSocket;
import java.io.IOException;
import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.concurrent.atomic.AtomicReference;

/**
 * Serves one vhost-user device on one socket path: either listening (the frontend connects, QEMU's default) or
 * connecting to a frontend that listens (QEMU's {@code server=on}), reconnecting after each session. One frontend
 * at a time: a second connection while a session runs is refused and closed. Each session runs on its own control
 * thread; a session's failure ends only that session.
 */
public final class VhostUserServer implements AutoCloseable {
    private static final Logger LOG = System.getLogger(VhostUserServer.class.getName());

    private final Path path;
    private final VhostUserDevice device;
    private final boolean client;
    private final AtomicReference<BackendSession> session = new AtomicReference<>();
    private volatile boolean closed;
    private UnixSocket listener;
    private Thread thread;
    private int sessions;

    private VhostUserServer(Path path, VhostUserDevice device, boolean client) {
        this.path = path;
        this.device = device;
        this.client = client;
    }

    /**
     * Listens on {@code path}. A stale socket file (nobody accepts on it) is replaced; a path another live process
     * serves is refused. The socket is made owner-only (0600).
     */
    public static VhostUserServer listen(Path path, VhostUserDevice device) {
        VhostUserServer s = new VhostUserServer(path, device, false);
        removeIfStale(path);
        s.listener = UnixSocket.listen(path, 4);
        try {
            Files.setPosixFilePermissions(path, PosixFilePermissions.fromString("rw-------"));
        } catch (IOException e) {
            s.listener.close();
            throw new VhostUserException("cannot restrict permissions of " + path + ": " + e.getMessage(), e);
        }
        s.thread = Thread.ofPlatform().name("vhost-user-accept " + path.getFileName()).daemon(true).start(s::acceptLoop);
        LOG.log(Level.INFO, "listening on {0}", path);
        return s;
    }

    /** Connects to a frontend listening on {@code path}, and again after each session ends. */
    public static VhostUserServer connect(Path path, VhostUserDevice device) {
        VhostUserServer s = new VhostUserServer(path, device, true);
        s.thread = Thread.ofPlatform().name("vhost-user-client " + path.getFileName()).daemon(true).start(s::clientLoop);
        return s;
    }

    /** Deletes {@code path} if it is a socket nobody listens on; refuses if someone does. */
    static void removeIfStale(Path path) {
        if (!Files.exists(path, java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
            return;
        }
        if (!isSocket(path)) {
            throw new VhostUserException(path + " exists and is not a socket; not replacing it");
        }
        try (UnixSocket probe = UnixSocket.connect(path)) {
            throw new VhostUserException(path + " is served by another live process; not taking it over");
        } catch (ErrnoException e) {
            if (e.errno() != ErrnoException.ECONNREFUSED) {
                throw new VhostUserException("probing " + path + ": " + e.getMessage(), e);
            }
        }
        try {
            Files.delete(path);
            LOG.log(Level.INFO, "removed stale socket {0}", path);
        } catch (IOException e) {
            throw new VhostUserException("cannot remove stale socket " + path + ": " + e.getMessage(), e);
        }
    }

    private static boolean isSocket(Path p) {
        try {
            Object mode = Files.getAttribute(p, "unix:mode", java.nio.file.LinkOption.NOFOLLOW_LINKS);
            return ((Integer) mode & 0xF000) == 0xC000;
        } catch (IOException | UnsupportedOperationException e) {
            return false;
        }
    }

    private void acceptLoop() {
        while (!closed) {
            UnixSocket conn;
            try {
                conn = listener.accept();
            } catch (RuntimeException e) {
                if (!closed) {
                    LOG.log(Level.ERROR, "{0}: accept failed: {1}", path, e.getMessage());
                }
                return;
            }
            if (session.get() != null) {
                LOG.log(Level.WARNING, "{0}: refusing a second frontend while a session runs", path);
                conn.close();
                continue;
            }
            runSession(conn, false);
        }
    }

    private void clientLoop() {
        long delay = 100;
        while (!closed) {
            UnixSocket conn;
            try {
                conn = UnixSocket.connect(path);
                delay = 100;
            } catch (RuntimeException e) {
                sleep(delay);
                delay = Math.min(delay * 2, 1000);
                continue;
            }
            LOG.log(Level.INFO, "connected to {0}", path);
            runSession(conn, true);
        }
    }

    /** Runs a session on its own thread; in client mode waits for it before reconnecting. */
    private void runSession(UnixSocket conn, boolean wait) {
        String name = path.getFileName() + "#" + (++sessions);
        BackendSession s = new BackendSession(name, new Channel(conn), device);
        session.set(s);
        Thread t = Thread.ofPlatform().name("vhost-user " + name).daemon(true).start(() -> {
            try {
                s.run();
            } catch (RuntimeException e) {
                LOG.log(Level.ERROR, "{0}: session failed: {1}", name, e.toString());
            } finally {
                session.compareAndSet(s, null);
            }
        });
        if (wait) {
            try {
                t.join();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    private static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    public Path path() {
        return path;
    }

    public boolean hasSession() {
        return session.get() != null;
    }

    @Override
    public void close() {
        closed = true;
        BackendSession s = session.get();
        if (s != null) {
            s.close();
        }
        if (listener != null) {
            try {
                listener.shutdown();
            } catch (RuntimeException ignored) {
                // not connected: shutdown on a listener may fail; close below wakes accept
            }
            listener.close();
            try {
                Files.deleteIfExists(path);
            } catch (IOException ignored) {
                // best effort
            }
        }
        if (thread != null) {
            try {
                thread.join(2000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }
}
