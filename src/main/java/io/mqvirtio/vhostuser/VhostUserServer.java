package io.mqvirtio.vhostuser;

import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.Fd;
import io.mqvirtio.linux.UnixSocket;
import java.io.IOException;
import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermission;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.Set;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.atomic.AtomicReference;

/**
 * Serves one vhost-user device on one socket path: either listening (the frontend connects, QEMU's default) or
 * connecting to a frontend that listens (QEMU's {@code server=on}), reconnecting after each session. One frontend
 * at a time: a second connection while a session runs is refused and closed. Each session runs on its own control
 * thread; a session's failure ends only that session. {@link #close()} ends the session and returns once it has
 * been torn down.
 */
public final class VhostUserServer implements AutoCloseable {
    private static final Logger LOG = System.getLogger(VhostUserServer.class.getName());
    private static final int BACKLOG = 4;
    private static final Set<PosixFilePermission> OWNER_ONLY = PosixFilePermissions.fromString("rw-------");

    private final Path path;
    private final VhostUserDevice device;
    private final boolean client;
    private final AtomicReference<BackendSession> session = new AtomicReference<>();
    private volatile Thread sessionThread;
    private volatile boolean closed;
    private UnixSocket listener;
    private Object socketInode; // the inode of the socket file we created, so close() removes only ours
    private Thread thread;
    private int sessions;
    private final WarningLimit warnings;

    /** How long {@link #close()} waits for a session to tear down. */
    private static final long CLOSE_WAIT_MS = 5000;

    private VhostUserServer(Path path, VhostUserDevice device, boolean client) {
        this.path = path;
        this.warnings = new WarningLimit(String.valueOf(path.getFileName()));
        this.device = device;
        this.client = client;
    }

    /**
     * Listens on {@code path}. A stale socket file (nobody accepts on it) is replaced; a path another live process
     * serves is refused, and so is any other kind of file. The socket file is owner-only (0600) from the moment it
     * appears at {@code path}: it is bound under a temporary name, restricted, then linked into place (a link never
     * replaces an existing file, so a server that appeared meanwhile is not taken over either).
     */
    public static VhostUserServer listen(Path path, VhostUserDevice device) {
        VhostUserServer s = new VhostUserServer(path, device, false);
        // Probing, removing a stale file and linking ours in are one step under an flock on the directory (no lock
        // file left behind): two backends starting on the same stale path would otherwise both find it stale, and
        // the second would delete the first's new socket.
        try (Fd lock = lockDirectoryOf(path)) {
            removeIfStale(path);
            s.listener = bindOwnerOnly(path);
        }
        try {
            s.socketInode = Files.getAttribute(path, "unix:ino", LinkOption.NOFOLLOW_LINKS);
        } catch (IOException | UnsupportedOperationException e) {
            s.socketInode = null;
        }
        s.thread = Thread.ofPlatform().name("vhost-user-accept " + path.getFileName()).daemon(true).start(s::acceptLoop);
        LOG.log(Level.INFO, "listening on {0}", path);
        return s;
    }

    private static UnixSocket bindOwnerOnly(Path path) {
        Path abs = path.toAbsolutePath();
        Path tmp = abs.resolveSibling(".mqv-" + Long.toHexString(ThreadLocalRandom.current().nextLong() >>> 1));
        if (tmp.toString().getBytes(java.nio.charset.StandardCharsets.UTF_8).length > 107) {
            // No room for a temporary name: bind in place and restrict at once (umask decides the mode meanwhile).
            UnixSocket l = UnixSocket.listen(path, BACKLOG);
            try {
                Files.setPosixFilePermissions(path, OWNER_ONLY);
                return l;
            } catch (IOException e) {
                l.close();
                deleteQuietly(path);
                throw new VhostUserException("cannot restrict permissions of " + path + ": " + e.getMessage(), e);
            }
        }
        UnixSocket l = UnixSocket.listen(tmp, BACKLOG);
        try {
            Files.setPosixFilePermissions(tmp, OWNER_ONLY);
            Files.createLink(abs, tmp);
            return l;
        } catch (FileAlreadyExistsException e) {
            l.close();
            throw new VhostUserException(path + " appeared while binding; not replacing it", e);
        } catch (IOException | UnsupportedOperationException e) {
            l.close();
            throw new VhostUserException("cannot create owner-only socket " + path + ": " + e.getMessage(), e);
        } finally {
            deleteQuietly(tmp);
        }
    }

    /** Connects to a frontend listening on {@code path}, and again after each session ends. */
    public static VhostUserServer connect(Path path, VhostUserDevice device) {
        VhostUserServer s = new VhostUserServer(path, device, true);
        s.thread = Thread.ofPlatform().name("vhost-user-client " + path.getFileName()).daemon(true).start(s::clientLoop);
        return s;
    }

    private static Fd lockDirectoryOf(Path path) {
        Path dir = path.toAbsolutePath().getParent();
        if (!Files.isDirectory(dir)) {
            throw new VhostUserException("cannot listen on " + path + ": the directory " + dir + " does not exist");
        }
        try {
            return Fd.lockDirectory(dir.toString());
        } catch (ErrnoException e) {
            throw new VhostUserException("cannot lock " + dir + " to set up " + path + ": " + e.getMessage(), e);
        }
    }

    /** Deletes {@code path} if it is a socket nobody listens on; refuses if someone does. */
    static void removeIfStale(Path path) {
        if (!Files.exists(path, LinkOption.NOFOLLOW_LINKS)) {
            return;
        }
        if (!isSocket(path)) {
            throw new VhostUserException(path + " exists and is not a socket; not replacing it");
        }
        try {
            UnixSocket.connect(path).close();
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
            Object mode = Files.getAttribute(p, "unix:mode", LinkOption.NOFOLLOW_LINKS);
            return ((Integer) mode & 0xF000) == 0xC000;
        } catch (IOException | UnsupportedOperationException e) {
            return false;
        }
    }

    private void acceptLoop() {
        int failures = 0;
        while (!closed) {
            UnixSocket conn;
            try {
                conn = listener.accept();
                failures = 0;
            } catch (ErrnoException e) {
                if (closed) {
                    return;
                }
                // EMFILE, ENFILE, ENOMEM, ECONNABORTED...: pass; the listener itself is fine. Keep serving.
                if (++failures <= 10 || failures % 1000 == 0) {
                    LOG.log(Level.ERROR, "{0}: accept failed ({1} in a row): {2}", path, failures, e.getMessage());
                }
                sleep(100);
                continue;
            } catch (RuntimeException e) {
                if (!closed) {
                    LOG.log(Level.ERROR, "{0}: accept failed, no longer listening: {1}", path, e.toString());
                }
                return;
            }
            if (conn == null) {
                continue;
            }
            if (closed || session.get() != null) {
                if (!closed) {
                    warnings.warn(LOG, "{0}: refusing a second frontend while a session runs", path);
                }
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
        BackendSession s = new BackendSession(name, new Channel(conn), device, warnings);
        session.set(s);
        Thread t = Thread.ofPlatform().name("vhost-user " + name).daemon(true).unstarted(() -> {
            try {
                s.run();
            } catch (RuntimeException | Error e) {
                LOG.log(Level.ERROR, name + ": session failed", e);
            } finally {
                session.compareAndSet(s, null);
            }
        });
        sessionThread = t;
        t.start();
        if (closed) {
            s.close(); // close() ran before this session was published: end it now
        }
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

    /**
     * Stops listening (or reconnecting), ends the running session and waits for it to tear down, and removes the
     * socket file if it is still the one this server created.
     */
    @Override
    public void close() {
        closed = true;
        BackendSession s = session.get();
        if (s != null) {
            s.close();
        }
        if (listener != null) {
            try {
                listener.shutdown(); // wakes the accept loop
            } catch (RuntimeException ignored) {
                // not every kernel wakes accept on shutdown; closing below does
            }
            removeOwnSocketFile();
        }
        join(thread);
        if (listener != null) {
            listener.close();
        }
        s = session.get();
        if (s != null) {
            s.close(); // started while we were closing
        }
        join(sessionThread);
        if (sessionThread != null && sessionThread.isAlive()) {
            LOG.log(Level.WARNING, "{0}: session did not end within {1} ms", path, CLOSE_WAIT_MS);
        }
    }

    private void removeOwnSocketFile() {
        try {
            Object ino = Files.getAttribute(path, "unix:ino", LinkOption.NOFOLLOW_LINKS);
            if (socketInode != null && socketInode.equals(ino)) {
                Files.deleteIfExists(path);
            } else if (socketInode != null) {
                LOG.log(Level.WARNING, "{0} is no longer our socket; leaving it", path);
            }
        } catch (IOException | UnsupportedOperationException e) {
            // gone already, or not ours to judge: leave it
        }
    }

    private static void join(Thread t) {
        if (t == null) {
            return;
        }
        try {
            t.join(CLOSE_WAIT_MS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private static void deleteQuietly(Path p) {
        try {
            Files.deleteIfExists(p);
        } catch (IOException ignored) {
            // best effort
        }
    }
}
