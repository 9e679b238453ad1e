package io.mqvirtio.peers;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * A libvirt daemon of the test's own: {@code libvirtd} (system mode, as root) with its sockets in the test's directory,
 * so that it answers only this test's {@code virsh -c qemu:///system?socket=...}, and a {@code virtlogd} (QEMU's log
 * handler) if none runs. {@link #close} destroys the domains the test created, stops both daemons and removes the
 * QEMU logs libvirt wrote for them. {@link #unavailable} says why libvirt cannot run here, or null.
 */
final class Libvirt implements AutoCloseable {
    private final Path dir;
    private final String uri;
    private final Process libvirtd;
    private final Process virtlogd; // null: one ran already
    private final List<String> domains = new ArrayList<>();

    private Libvirt(Path dir, String uri, Process libvirtd, Process virtlogd) {
        this.dir = dir;
        this.uri = uri;
        this.libvirtd = libvirtd;
        this.virtlogd = virtlogd;
    }

    /** Why libvirt cannot run on this machine (not installed, not root), or null. */
    static String unavailable() {
        for (String bin : List.of("/usr/sbin/libvirtd", "/usr/sbin/virtlogd", "/usr/bin/virsh")) {
            if (!Files.isExecutable(Path.of(bin))) {
                return bin + " is missing (scripts/install-deps.sh installs libvirt-daemon-system and libvirt-clients)";
            }
        }
        if (!"root".equals(System.getProperty("user.name"))) {
            return "libvirtd's system mode needs root";
        }
        if (Files.exists(Path.of("/run/libvirt/libvirt-sock"))) {
            return "a libvirtd of the machine's own runs (/run/libvirt/libvirt-sock): a second one would share its state";
        }
        return null;
    }

    static Libvirt start(Path dir) throws Exception {
        Path sockets = Files.createDirectories(dir.resolve("libvirt-sock"));
        Path conf = dir.resolve("libvirtd.conf");
        Files.writeString(conf, "unix_sock_dir = \"" + sockets + "\"\nlisten_tls = 0\nlisten_tcp = 0\n"
                + "auth_unix_rw = \"none\"\nunix_sock_rw_perms = \"0700\"\nunix_sock_ro_perms = \"0700\"\n");
        Process logd = null;
        if (!Files.exists(Path.of("/run/libvirt/virtlogd-sock"))) {
            logd = new ProcessBuilder("/usr/sbin/virtlogd").redirectErrorStream(true)
                    .redirectOutput(dir.resolve("virtlogd.log").toFile()).start();
        }
        Process d = new ProcessBuilder("/usr/sbin/libvirtd", "-f", conf.toString(), "-p",
                dir.resolve("libvirtd.pid").toString()).redirectErrorStream(true)
                .redirectOutput(dir.resolve("libvirtd.log").toFile()).start();
        Libvirt l = new Libvirt(dir, "qemu:///system?socket=" + sockets.resolve("libvirt-sock"), d, logd);
        try {
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
            while (!Files.exists(sockets.resolve("libvirt-sock")) || !Files.exists(Path.of("/run/libvirt/virtlogd-sock"))) {
                if (!d.isAlive() || System.nanoTime() > deadline) {
                    throw new IOException("libvirtd did not start: " + Peers.tail(dir.resolve("libvirtd.log"), 20));
                }
                Thread.sleep(100);
            }
            l.virsh("version");
        } catch (Exception e) {
            l.close();
            throw e;
        }
        return l;
    }

    /** {@code virsh -c URI args...}; its output; an error if it fails. */
    String virsh(String... args) throws IOException, InterruptedException {
        List<String> cmd = new ArrayList<>(List.of("virsh", "-c", uri));
        cmd.addAll(List.of(args));
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        if (!p.waitFor(120, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            throw new IOException("virsh " + String.join(" ", args) + ": no answer in 120 s");
        }
        if (p.exitValue() != 0) {
            throw new IOException("virsh " + String.join(" ", args) + " failed (" + p.exitValue() + "): " + out.trim()
                    + "\nlibvirtd: " + Peers.tail(dir.resolve("libvirtd.log"), 10));
        }
        return out;
    }

    /** {@code virsh create FILE}: a transient domain named {@code name}, destroyed by {@link #close} if still there. */
    void create(String name, Path xml) throws IOException, InterruptedException {
        synchronized (domains) {
            domains.add(name);
        }
        virsh("create", xml.toString());
    }

    /** Whether domain {@code name} still runs (a transient one is gone once its guest powered off). */
    boolean running(String name) throws IOException, InterruptedException {
        return virsh("list", "--name").lines().anyMatch(l -> l.trim().equals(name));
    }

    @Override
    public void close() {
        synchronized (domains) {
            for (String d : domains) {
                try {
                    if (running(d)) {
                        virsh("destroy", d);
                    }
                } catch (IOException | InterruptedException e) {
                    // the daemon is stopped below, and QEMU with it gets no more guests
                }
                try {
                    Files.deleteIfExists(Path.of("/var/log/libvirt/qemu/" + d + ".log"));
                } catch (IOException e) {
                    // a log left behind is no harm to the next test
                }
            }
        }
        Peers.stop(libvirtd, 10_000);
        if (virtlogd != null) {
            Peers.stop(virtlogd, 5000);
        }
    }
}
