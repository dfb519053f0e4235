echo hello world
#----
echo "a  b"   c
#----
echo 'single $HOME' "double"
#----
x=5; echo "$x" '$x' $x
#----
A='x  y'; echo $A; echo "$A"
#----
echo a\ b c\\d
#----
echo "tab	in" 'quote"s'
#----
echo -n abc; echo def
#----
echo 'e\n'
#----
printf '%s\n' one two three
#----
printf '%d|%5d|%-5d|%05d\n' 42 42 42 42
#----
printf '%s=%s\n' a 1 b 2 c
#----
printf '%x %o %X\n' 255 8 255
#----
printf '%.2f %e\n' 3.14159 12345.678
#----
printf 'no newline'
#----
printf '%c%c\n' abc def
#----
printf '%%\n'
#----
true; echo $?
#----
false; echo $?
#----
false || echo rescued
#----
true && echo chained && false || echo last
#----
! true; echo $?
#----
! false && echo inverted
#----
exit 3
#----
(exit 4); echo $?
#----
nope_command_xyz; echo $?
#----
cat a.txt
#----
cat a.txt b.txt
#----
cat < a.txt | wc -l
#----
wc -l a.txt
#----
wc -c < b.txt
#----
wc -w words.txt
#----
head -n 1 b.txt
#----
head -2 words.txt
#----
tail -n 1 b.txt
#----
tail -n +2 b.txt
#----
head -c 3 a.txt; echo
#----
sort nums.txt
#----
sort -n nums.txt
#----
sort -rn nums.txt | head -2
#----
sort -u nums.txt
#----
sort nums.txt | uniq -c
#----
sort -n nums.txt | uniq -d
#----
cut -d, -f1 data.csv
#----
cut -d, -f2 data.csv | tail -n +2 | sort -n
#----
cut -c1-3 words.txt
#----
tr a-z A-Z < a.txt
#----
tr -d o < a.txt
#----
echo "a,b,c" | tr , '\n'
#----
echo hello | tr -s l
#----
seq 5
#----
seq 2 2 10
#----
seq 3 | paste -sd+ -
#----
seq 10 | tail -3
#----
basename /a/b/c.txt; basename /a/b/c.txt .txt; dirname /a/b/c.txt
#----
nl b.txt
#----
fold -w 5 words.txt | head -3
#----
echo abcdef | rev 2>/dev/null || echo norev
#----
grep hello a.txt
#----
grep -c the words.txt
#----
grep -n the words.txt
#----
grep -v the words.txt
#----
grep -i HELLO a.txt
#----
grep -o 'the [a-z]*' words.txt
#----
grep -E '^(b1|b3)$' b.txt
#----
grep -rn TODO src | sort
#----
grep -rn TODO src | sort | uniq -c | sort -rn | head
#----
grep -l TODO src/* | sort
#----
grep -q world a.txt && echo found
#----
grep nothing a.txt; echo $?
#----
grep -w the words.txt | wc -l
#----
grep -F '.' data.csv; echo $?
#----
sed 's/o/0/g' a.txt
#----
sed -n 2p b.txt
#----
sed '1d' b.txt
#----
sed -e 's/^/> /' a.txt
#----
sed 's/\(b\)\([0-9]\)/\2\1/' b.txt
#----
sed -n '/b2/,$p' b.txt
#----
echo hello | sed 's/l*/X/'
#----
awk '{print $2}' words.txt
#----
awk -F, 'NR>1 {s+=$2} END {print s}' data.csv
#----
awk '{print NR": "$0}' b.txt
#----
awk 'length($0) > 7' words.txt
#----
seq 5 | awk '{s+=$1} END {print s, s/NR}'
#----
awk 'BEGIN {printf "%05.1f\n", 3.14159}'
#----
awk -F, '$2 > 30 {print $1}' data.csv
#----
echo 'a b c' | awk '{print NF, $NF}'
#----
find . -name '*.py' | sort
#----
find . -type d | sort
#----
find . -name '*.csv' | xargs wc -l
#----
find src -type f | sort | xargs cat
#----
find . -name '*.rs' -exec grep -c TODO {} \; | sort
#----
ls
#----
ls sub src
#----
ls -a sub
#----
ls -1 | wc -l
#----
ls nope_dir; echo $?
#----
mkdir -p d/e/f && ls d/e
#----
touch t1 t2 && ls t*
#----
cp a.txt copy.txt && cat copy.txt
#----
mv b.txt moved.txt && ls moved.txt b.txt 2>/dev/null; echo $?
#----
rm a.txt && ls a.txt 2>/dev/null; echo $?
#----
rm -r sub && ls sub 2>/dev/null || echo gone
#----
echo content > new.txt && cat new.txt
#----
echo one > f; echo two >> f; cat f
#----
echo err >&2; echo out
#----
ls nope_dir 2>/dev/null; echo done
#----
{ echo a; echo b; } > g.txt; cat g.txt
#----
(echo sub; echo shell) | wc -l
#----
echo x > /dev/null; echo visible
#----
cat nope_file 2>&1 | wc -l
#----
echo to-stderr 2>&1 >&2 | cat
#----
diff a.txt a.txt && echo same
#----
printf 'a\nb\n' > p; printf 'a\nc\n' > q; diff p q; echo $?
#----
cmp a.txt a.txt && echo identical
#----
cat data.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["b"])'
#----
python3 -c 'print(40 + 2)'
#----
python3 sub/y.py a 'b c'
#----
python3 -c 'import sys; sys.exit(5)'; echo $?
#----
python3 -c 'print("x" * 3)' | tr x y
#----
tar cf arc.tar src && tar tf arc.tar | sort
#----
gzip -c a.txt | gzip -d
#----
tar czf arc.tgz sub && mkdir out && tar xzf arc.tgz -C out && ls out/sub | sort
#----
echo hello | base64
#----
echo aGVsbG8K | base64 -d
#----
printf abc | sha256sum
#----
printf abc | md5sum
#----
for f in *.txt; do echo "== $f"; head -1 "$f"; done
#----
for i in 1 2 3; do echo $i; done
#----
for i in $(seq 3); do printf '%s,' $i; done; echo
#----
for w in "a b" c; do echo "[$w]"; done
#----
set -- x y z; for a; do echo $a; done
#----
i=0; while [ $i -lt 3 ]; do echo $i; i=$((i+1)); done
#----
i=0; until [ $i -ge 2 ]; do i=$((i+1)); echo $i; done
#----
for i in 1 2 3 4 5; do [ $i = 2 ] && continue; [ $i = 4 ] && break; echo $i; done
#----
for i in 1 2; do for j in a b; do [ $j = b ] && continue 2; echo $i$j; done; done
#----
while read line; do echo "<$line>"; done < b.txt
#----
cat b.txt | while read l; do echo $l; done | wc -l
#----
printf 'a b c\n' | { read x y; echo "$y|$x"; }
#----
printf 'k=v\n' | while IFS== read k v; do echo "$k -> $v"; done
#----
if [ -f a.txt ]; then cat a.txt; else echo missing; fi
#----
if [ -f out.txt ]; then cat out.txt; else echo missing; fi
#----
if [ -d sub ]; then echo dir; fi
#----
x=3; if [ $x -gt 5 ]; then echo big; elif [ $x -gt 2 ]; then echo mid; else echo small; fi
#----
[ -z "" ] && echo empty; [ -n "x" ] && echo nonempty
#----
[ abc = abc ] && echo eq; [ abc != abd ] && echo ne
#----
[ 3 -lt 10 ] && echo lt; [ 10 -le 10 ] && echo le
#----
test -e nope_file || echo absent
#----
[ ! -e nope ] && echo negated
#----
[ -s a.txt ] && echo nonzero
#----
[ 1 -eq 1 -a 2 -eq 2 ] && echo both
#----
case abc in a*) echo starts-a;; *) echo other;; esac
#----
for f in x.py y.txt z; do case $f in *.py) echo py;; *.txt|*.md) echo text;; *) echo other;; esac; done
#----
case 5 in [0-9]) echo digit;; esac
#----
f() { echo "args: $# $1 $2"; }; f one "two three"
#----
f() { return 7; }; f; echo $?
#----
v=global; f() { local v=local; echo $v; }; f; echo $v
#----
fact() { if [ $1 -le 1 ]; then echo 1; else echo $(( $1 * $(fact $(($1-1))) )); fi; }; fact 6
#----
f() { echo "$@"; }; f a "b c" d
#----
x=1; (x=2; echo $x); echo $x
#----
(cd sub && pwd | sed 's|.*/||'); pwd | sed 's|.*/||'
#----
{ x=inner; }; echo $x
#----
echo $(echo nested $(echo deep))
#----
echo "count: $(wc -l < b.txt)"
#----
echo `echo backticks`
#----
files=$(ls *.txt | wc -l); echo $files
#----
echo $((1 + 2 * 3))
#----
echo $(( (1 + 2) * 3 ))
#----
echo $((10 / 3)) $((10 % 3)) $((-7 / 2))
#----
echo $((1 << 4)) $((255 & 15)) $((1 | 6)) $((5 ^ 1))
#----
x=5; echo $((x * 2)) $(( x > 3 ? 1 : 0 ))
#----
i=1; i=$((i + 1)); echo $i
#----
echo $((0x10)) $((010))
#----
v=/a/b/file.tar.gz; echo ${v##*/} ${v%%.*} ${v#*/} ${v%.*}
#----
v=hello; echo ${#v}
#----
echo ${unset_var:-default}
#----
echo ${u:=assigned}; echo $u
#----
v=x; echo ${v:+alt} ${none:+alt}.
#----
echo "${missing}" "[${missing:-}]"
#----
set -- a b c; echo $# $1 $3; shift; echo $# $1
#----
set -- "x y" z; echo "$@"; for a in "$@"; do echo "[$a]"; done
#----
set -- a b; echo "$*"
#----
sh -c 'echo $0 $1 $2' zero one two
#----
sh -c 'exit 9'; echo $?
#----
bash -c 'echo from bash' 2>/dev/null || sh -c 'echo from bash'
#----
echo 'echo in script $1' > s.sh; sh s.sh arg
#----
echo 'x=sourced' > s2.sh; . ./s2.sh; echo $x
#----
eval 'y=evaluated'; echo $y
#----
cmd='echo built'; eval "$cmd"
#----
cat <<EOF
line one
value $((1+1))
EOF
#----
cat <<'EOF'
literal $HOME `x`
EOF
#----
cat <<-EOF
	tab stripped
	EOF
#----
x=var; cat <<EOF | tr a-z A-Z
$x here
EOF
#----
cat > data2.json <<EOF
{"rows": [1, 2, 3]}
EOF
python3 -c "import json; print(json.load(open('data2.json')))"
#----
set -e; echo before; false; echo never
#----
set -e; false || true; echo survived
#----
set -e; if false; then echo no; fi; echo ok
#----
set -u; echo ${unset_xyz:-fallback}
#----
false | true; echo $?
#----
true | false; echo $?
#----
trap 'echo trapped' EXIT; echo main
#----
trap 'echo cleanup' EXIT; exit 2
#----
sleep 0.1 & echo bg; wait; echo waited
#----
echo a > ja & wait; cat ja
#----
yes | head -3
#----
seq 100000 | head -2
#----
seq 1000 | grep 7 | wc -l
#----
seq 20 | sort -rn | head -3 | tr '\n' ' '; echo
#----
echo one two three | tr ' ' '\n' | sort | head -1
#----
cat words.txt | tr ' ' '\n' | sort | uniq -c | sort -rn | head -3
#----
ls *.txt | wc -l
#----
echo *.txt
#----
echo *.none
#----
echo s?b
#----
echo [ab].txt
#----
echo "*.txt"
#----
x='*.txt'; echo $x
#----
x='*.txt'; echo "$x"
#----
echo sub/*.py
#----
IFS=,; set -- $(echo a,b,c); echo $2
#----
x="a:b:c"; IFS=:; for p in $x; do echo $p; done
#----
export FOO=bar; sh -c 'echo $FOO'
#----
FOO=one sh -c 'echo $FOO'; echo "[$FOO]"
#----
env -i X=1 sh -c 'echo $X' 2>/dev/null || echo noenv
#----
unset x; x=1; unset x; echo "[$x]"
#----
readonly r=1; echo $r
#----
command -v ls >/dev/null && echo has-ls
#----
type cd | head -1
#----
cd sub; pwd | sed 's|.*/||'; cd ..; ls -d sub
#----
cd nope_dir 2>/dev/null; echo $?
#----
echo $PWD | sed 's|.*/||'
#----
date -d @0 -u +%Y 2>/dev/null || date -u -r 0 +%Y
#----
printf '%s\n' c a b | sort | tr -d '\n'; echo
#----
printf 'x\ny\n' | tee teed.txt | wc -l; cat teed.txt
#----
echo abc | od -c | head -1
#----
split -l 1 b.txt part_ && ls part_* | wc -l
#----
printf '1\n2\n' > l; printf 'a\nb\n' > r; paste l r
#----
printf '1 a\n2 b\n' > j1; printf '1 x\n2 y\n' > j2; join j1 j2
#----
printf 'a\nb\n' > c1; printf 'b\nc\n' > c2; comm c1 c2
#----
expand -t 4 <<EOF
a	b
EOF
#----
echo "  lead and trail  " | sed 's/^ *//;s/ *$//'
#----
x=abc; [ "${x#a}" = bc ] && echo stripped
#----
n=0; for f in sub/*; do n=$((n+1)); done; echo $n
#----
getopts_demo() { while getopts "ab:" o; do echo "$o=${OPTARG:-}"; done; }; getopts_demo -a -b val
#----
echo $(( $(wc -l < b.txt) * 2 ))
#----
test "$(echo hi)" = hi && echo subst-ok
#----
printf '%s\n' "$(printf 'a\nb\n\n\n')" | wc -l
#----
echo "$(echo '  spaced  ')"
#----
echo $(echo '  spaced  ')
#----
a=1 b=2; echo $a$b
#----
echo ${x:-$(echo computed)}
#----
: > empty.txt; wc -c < empty.txt
#----
echo line >> app.txt; echo line2 >> app.txt; wc -l < app.txt
#----
cat a.txt nope 2>/dev/null; echo $?
#----
ls | grep -c txt
#----
f() { local n=$1; [ $n -le 0 ] && return; echo $n; f $((n-1)); }; f 3
#----
echo done | (read v; echo "got $v")
#----
x=$(false); echo $?
#----
echo "a\\b"
#----
echo '#not a comment' # a comment
#----
echo a;echo b
#----
echo $((3>2)) $((2>3)) $((!0))
