import { Injectable } from '@nestjs/common';
import type { Note } from '../generated/prisma/client';
import { PrismaService } from '../prisma/prisma.service';

export interface CreateNote {
  body: string;
  /** Left over from before pgtenant, when clients named their tenant. Passed through on
   *  purpose: PostgreSQL's policy refuses a row of another tenant, whatever the app sends. */
  tenantId?: string;
}

@Injectable()
export class NotesService {
  constructor(private readonly prisma: PrismaService) {}

  list(tenantId?: string): Promise<Note[]> {
    return this.prisma.note.findMany({
      where: tenantId === undefined ? {} : { tenantId },
      orderBy: { id: 'asc' },
    });
  }

  get(id: number): Promise<Note | null> {
    return this.prisma.note.findUnique({ where: { id } });
  }

  create(input: CreateNote): Promise<Note> {
    return this.prisma.note.create({ data: input });
  }

  /** What the database says this connection's tenant is (set by pgtenant, not by us). */
  async databaseTenant(): Promise<string | null> {
    const rows = await this.prisma.$queryRaw<{ tenant: string | null }[]>`
      SELECT current_setting('app.current_tenant', true) AS tenant`;
    return rows[0]?.tenant ?? null;
  }
}
