#!/usr/bin/env python3
"""Rough function lengths in Rust sources (issue 15).

`python3 tools/fnlen.py [DIR] [N]` prints how many functions DIR (default src) has, the 90th
percentile of their length in lines (signature to closing brace), how many are over 80 lines,
and the N longest (default 25). Test functions count too. A brace counter, not a parser:
strings and comments are skipped roughly.
"""
import re,sys,os
res=[]
for root,_,files in os.walk(sys.argv[1] if len(sys.argv)>1 else 'src'):
    for f in files:
        if not f.endswith('.rs'): continue
        p=os.path.join(root,f)
        lines=open(p).read().split('\n')
        i=0
        while i<len(lines):
            l=lines[i]
            m=re.match(r'\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)',l)
            if m and not l.strip().startswith('//'):
                # find opening brace
                j=i; depth=0; started=False
                while j<len(lines):
                    s=re.sub(r'"(\\.|[^"\\])*"','""',lines[j]); s=re.sub(r"'(\\.|[^'\\])'","''",s); s=s.split('//')[0]
                    if not started and s.rstrip().endswith(';') and '{' not in s: break
                    for c in s:
                        if c=='{': depth+=1; started=True
                        elif c=='}': depth-=1
                    if started and depth==0: break
                    j+=1
                if started: res.append((j-i+1,p,i+1,m.group(6)))
            i+=1
res.sort(reverse=True)
n=len(res)
lens=sorted(r[0] for r in res)
print('fns',n,'p90',lens[int(0.9*n)] if n else 0, 'over80', sum(1 for r in res if r[0]>80))
for r in res[:int(sys.argv[2]) if len(sys.argv)>2 else 25]: print(*r)
