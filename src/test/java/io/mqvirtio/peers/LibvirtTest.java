package io.mqvirtio.peers;

import static org.assertj.core.api.Assertions.assertThat;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.mqvirtio.cli.Launcher;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * libvirt: the domain XML in {@code contrib/libvirt} is valid for libvirt's schema, and its vhost-user interface and
 * shared memory backing, put in a domain that boots the project's test guest, run through {@code virsh create}
 * against {@code mqvirtio serve} with a TAP: the guest pings the host side from each of its vCPUs, each over its own
 * queue pair, and every ping is answered.
 */
@Tag("peer")
class LibvirtTest {
    private static final Pattern TX = Pattern.compile(
            "(?m)^mqvirtio_queue_packets_total\\{device=\"lv\",direction=\"tx\",queue=\"(\\d+)\"\\} ([0-9.E]+)$");

    @TempDir
    Path dir;

    private static String run(String... argv) throws Exception {
        Process p = new ProcessBuilder(argv).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertThat(p.waitFor(120, TimeUnit.SECONDS)).as(String.join(" ", argv)).isTrue();
        assertThat(p.exitValue()).as("%s: %s", String.join(" ", argv), out).isZero();
        return out;
    }

    @Test
    @Timeout(60)
    void theContribDomainIsValidLibvirtXml() throws Exception {
        Peers.require("virt-xml-validate", "libvirt's virt-xml-validate (libvirt-clients, libxml2-utils)");
        Path xml = Path.of("contrib/libvirt/mqvirtio-vm.xml").toAbsolutePath();
        assertThat(run("virt-xml-validate", xml.toString(), "domain")).contains("validates");
        String text = Files.readString(xml);
        assertThat(text).contains("<interface type='vhostuser'>").contains("<source type='memfd'/>")
                .contains("<access mode='shared'/>").contains("<driver queues='4'");
    }

    @Test
    @Timeout(420)
    void virshCreateBootsTheTestGuestOnServe() throws Exception {
        String why = Libvirt.unavailable();
        assumeTrue(why == null, why);
        Path sock = dir.resolve("lv.sock");
        String name = "mqv-lv-" + ProcessHandle.current().pid() + "-" + (System.nanoTime() % 100000);
        try (PeerLab lab = PeerLab.open(dir); Libvirt libvirt = Libvirt.start(dir)) {
            String tap = lab.persistentTap("mqlv");
            Launcher.Run serve = lab.serve("serve", "--socket-path", sock.toString(), "--queues", "2", "--tap", tap,
                    "--name", "lv", "--metrics", "127.0.0.1:0");
            int port = Integer.parseInt(serve.awaitErr("metrics on http://127\\.0\\.0\\.1:(\\d+)/metrics", 30_000));
            serve.awaitErr("listening on ", 30_000);

            Path console = dir.resolve("lv.console.log");
            Path xml = dir.resolve("domain.xml");
            Files.writeString(xml, domain(lab, name, sock, console));
            run("virt-xml-validate", xml.toString(), "domain");
            libvirt.create(name, xml);

            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(360);
            while (!(Files.exists(console) && Files.readString(console).contains("MQV-DONE"))) {
                assertThat(System.nanoTime()).as("the guest finishes; console:%n%s%nserve:%n%s", Peers.tail(console, 40),
                        Peers.tail(serve.err(), 20)).isLessThan(deadline);
                Thread.sleep(500);
            }
            String text = Files.readString(console);
            Map<String, String> r = Guest.results(text);
            assertThat(r.get("sent")).as("the guest's results:%n%s", Peers.tail(console, 40)).isNotNull();
            assertThat(Integer.parseInt(r.get("sent"))).isEqualTo(2 * 10);
            assertThat(r.get("received")).as("every ping answered%n%s", Peers.tail(console, 40)).isEqualTo(r.get("sent"));
            String prom = lab.inside(() -> Launcher.get("127.0.0.1", port, "/metrics")).body();
            Matcher m = TX.matcher(prom);
            int queues = 0;
            while (m.find()) {
                // each vCPU's pings leave on its own queue (most of them: an ARP or a retry may take another)
                assertThat(Double.parseDouble(m.group(2))).as("frames the guest sent on TX queue %s", m.group(1))
                        .isGreaterThanOrEqualTo(5);
                queues++;
            }
            assertThat(queues).isEqualTo(2);
            // a transient domain whose guest powered off is gone
            long gone = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
            while (libvirt.running(name)) {
                assertThat(System.nanoTime()).as("domain %s gone after the guest powered off", name).isLessThan(gone);
                Thread.sleep(200);
            }
        }
    }

    /**
     * A domain that boots the test guest (our kernel and initramfs, the ping script appended as run-guest.sh does)
     * with the contrib example's memory backing and vhost-user interface (its socket and queue count made this test's).
     */
    private String domain(PeerLab lab, String name, Path sock, Path console) throws Exception {
        Path repo = lab.repo();
        Path guest = repo.resolve("target/guest");
        if (!Files.exists(guest.resolve("vmlinuz")) || !Files.exists(guest.resolve("initramfs.cpio.gz"))) {
            run(repo.resolve("scripts/guest/build-initramfs.sh").toString(), guest.toString());
        }
        Path ov = Files.createDirectories(dir.resolve("overlay"));
        Files.copy(repo.resolve("scripts/guest/tests/ping.sh"), ov.resolve("test.sh"));
        run("chmod", "755", ov.resolve("test.sh").toString());
        Path initrd = dir.resolve("initrd.cpio.gz");
        run("sh", "-c", "cat '" + guest.resolve("initramfs.cpio.gz") + "' > '" + initrd + "' && cd '" + ov
                + "' && echo test.sh | cpio -o -H newc -R 0:0 --quiet | gzip -1 -n >> '" + initrd + "'");

        String example = Files.readString(repo.resolve("contrib/libvirt/mqvirtio-vm.xml"));
        String memory = between(example, "<memoryBacking>", "</memoryBacking>");
        String nic = between(example, "<interface type='vhostuser'>", "</interface>")
                .replace("/run/mqvirtio/vm1.sock", sock.toString()).replace("queues='4'", "queues='2'");
        String cmdline = "console=ttyS0 panic=-1 quiet loglevel=3 mqv.ip=" + lab.guestCidr() + " mqv.peer=" + lab.host()
                + " mqv.count=10";
        return "<domain type='qemu'>\n"
                + "  <name>" + name + "</name>\n"
                + "  <memory unit='MiB'>512</memory>\n"
                + "  <vcpu>2</vcpu>\n"
                + "  " + memory + "\n"
                + "  <os>\n"
                + "    <type arch='x86_64'>hvm</type>\n"
                + "    <kernel>" + guest.resolve("vmlinuz") + "</kernel>\n"
                + "    <initrd>" + initrd + "</initrd>\n"
                + "    <cmdline>" + cmdline + "</cmdline>\n"
                + "  </os>\n"
                + "  <features><acpi/></features>\n"
                + "  <cpu mode='maximum'/>\n"
                + "  <on_poweroff>destroy</on_poweroff>\n"
                + "  <on_reboot>destroy</on_reboot>\n"
                + "  <on_crash>destroy</on_crash>\n"
                + "  <devices>\n"
                + "    " + nic + "\n"
                + "    <serial type='file'><source path='" + console + "'/><target port='0'/></serial>\n"
                + "    <memballoon model='none'/>\n"
                + "  </devices>\n"
                // QEMU as root, nothing relabelled: it reaches the test's 0700 directory and serve's 0600 socket
                + "  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>\n"
                + "</domain>\n";
    }

    private static String between(String text, String open, String close) {
        int a = text.indexOf(open);
        int b = text.indexOf(close, a);
        assertThat(a).as("%s in the example", open).isNotNegative();
        return text.substring(a, b + close.length());
    }
}
