# Homebrew formula: builds session-manager-plugin from the release's source tarball with cargo.
#
# packaging/build.sh writes dist/session-manager-plugin.rb from this file with the sha256 of the
# source tarball it made (dist/session-manager-plugin-<version>.src.tar.gz) and, when RELEASE_URL
# is set, the URL it will be published at. Publish the tarball there and put the written formula
# in a tap. Not tested here (no macOS or Homebrew on the build machine).
#
# It conflicts with Homebrew's cask `session-manager-plugin` (AWS's plugin), which installs the
# same command.
class SessionManagerPlugin < Formula
  desc "Drop-in replacement for AWS's Session Manager plugin (aws ssm start-session)"
  homepage "https://github.com/OWNER/session-manager-plugin-rs"
  url "https://github.com/OWNER/session-manager-plugin-rs/releases/download/v0.1.0/session-manager-plugin-0.1.0.src.tar.gz"
  version "0.1.0"
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"
  license "Apache-2.0"

  depends_on "rust" => :build

  def install
    # Only the plugin: the workspace's test-support crate (tests/agent-sim) is not installed.
    system "cargo", "install", *std_cargo_args(path: ".") # std_cargo_args adds --locked
    man1.install "packaging/session-manager-plugin.1"
    doc.install "README.md", "CHANGELOG.md"
  end

  def caveats
    <<~EOS
      If AWS's plugin is installed too (the session-manager-plugin cask, or
      /usr/local/sessionmanagerplugin), make sure this one comes first on PATH:
        which session-manager-plugin
    EOS
  end

  test do
    assert_match "1.2.764.0", shell_output("#{bin}/session-manager-plugin --version")
    assert_match "session-manager-plugin #{version}", shell_output("#{bin}/session-manager-plugin --help")
  end
end
