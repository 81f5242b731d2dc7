# Sourced by the benchmark scripts: `need COMMAND PACKAGE` installs PACKAGE from apt (through
# sudo unless root) when COMMAND is neither on the PATH nor in /usr/sbin (nginx lives there).
need() {
  command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ] && return
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "$2" >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq "$2" >/dev/null; fi
}
