package io.mqvirtio.cli;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine;
import picocli.CommandLine.Model.OptionSpec;

/** The man page is well-formed roff that man(1) shows, and names every command and option --help names. */
class ManPageTest {
    @TempDir
    Path dir;

    @Test
    @Timeout(60)
    void manShowsEveryCommandAndOptionOfTheCommandLine() throws Exception {
        Path page = dir.resolve("mqvirtio.1");
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        int rc = Main.run(new String[] {"generate-manpage", "--output", page.toString()}, System.out,
                new PrintStream(err, true, StandardCharsets.UTF_8));
        assertThat(rc).as(err.toString(StandardCharsets.UTF_8)).isZero();

        // groff with all warnings on: none may come (a stray request, an unescaped line start)
        Result groff = exec("groff", "-man", "-Tutf8", "-ww", "-z", page.toString());
        assertThat(groff.rc()).isZero();
        assertThat(groff.out()).as("groff warnings").isEmpty();

        Result man = exec("env", "MANWIDTH=120", "man", "-l", page.toString());
        assertThat(man.rc()).as(man.out()).isZero();
        String text = man.out().replace("\u2010", "-").replaceAll("-\\s*\\n\\s*", "-"); // man's own hyphenation
        assertThat(text).contains("MQVIRTIO(1)").contains("EXIT STATUS").contains("LISTEN_FDS");
        CommandLine root = Main.commandLine(System.out, System.err);
        for (String cmd : new String[] {"demo", "serve", "stats", "bench"}) {
            CommandLine c = root.getSubcommands().get(cmd);
            assertThat(text).contains("mqvirtio " + cmd);
            for (OptionSpec o : c.getCommandSpec().options()) {
                if (o.usageHelp() || o.versionHelp()) {
                    continue; // said once for all commands
                }
                assertThat(text).as("mqvirtio %s %s", cmd, o.longestName()).contains(o.longestName());
            }
        }
        assertThat(text).contains("Every command takes -h, --help").contains("mqvirtio bench ring").contains("--ring N");
    }

    private record Result(int rc, String out) {}

    private static Result exec(String... argv) throws Exception {
        Process p = new ProcessBuilder(argv).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertThat(p.waitFor(30, TimeUnit.SECONDS)).as(String.join(" ", argv)).isTrue();
        return new Result(p.exitValue(), out);
    }

    @Test
    void escapingKeepsTextLiteral() {
        assertThat(ManPage.escape("a-b \\n")).isEqualTo("a\\-b \\en");
        assertThat(ManPage.escape(".TH x\n'quote")).isEqualTo("\\&.TH x\n\\&'quote");
    }
}
